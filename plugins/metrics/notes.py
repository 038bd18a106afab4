"""Metrics that hear notes: ``frechet_transcriber`` and ``note_stats``, both on the piano transcription network of
``transcriber.py`` (trained once on the rendered piano set's MIDI by ``transcriber_train.py``, on first use or by
``python -m framework build-transcriber``, cached, the same judge for every run).

``frechet_transcriber``: every frame (23.3 ms) of every item gives one vector, the transcriber's 256 penultimate
units before their ReLU (:meth:`Transcriber.embedding`); the metric is the Fréchet distance between the Gaussian
fits of the real and the generated frames (FAD's construction, Kilgour et al. 2019, with our own network in
place of VGGish). Before the ReLU, because the ReLU maps every input without piano notes to nearly the same
point: after it, silence, piano-shaped noise and both demo generators all scored within a third of each other,
while the pre-activations still say how far from piano an input is (docs/metrics.md, "Validation"). Beside
it, ``frechet_transcriber_real_floor``: the same distance between two halves of the real items (alternating
items), the value real audio itself reaches with half as many frames. Lower is better; 0 only for identical
statistics.

``note_stats``: the transcriber's piano roll (key probability > ``threshold``, per frame), made into notes by
closing gaps of up to 2 frames (47 ms) and dropping runs shorter than 3 frames (70 ms; :func:`clean_roll`, so
that a decaying note flickering around the threshold is one note, not ten), gives what a listener would
count, for ``real`` and ``fake`` alike:

- ``notes_active_frames_{set}_pct``: share of frames with at least one confident note;
- ``notes_per_s_{set}``: note onsets (a key turning on between two frames of an item) per second;
- ``notes_polyphony_{set}``: mean number of keys on in the active frames;
- ``notes_pitch_class_distance``: total variation distance (half the L1 distance, 0..1) between the real and the
  generated pitch-class histograms (12 classes, counted over (frame, key) cells); 1 when a set has no notes.

Both take ``(B, C, T)`` audio at the data's sample rate (resampled to the transcriber's 22016 Hz when
different; channels averaged) and log which transcriber they used as run tags (``transcriber.*``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Metric
from framework.runtime import no_autocast
from plugins.common.stats import GaussianStats, frechet_distance
from plugins.metrics import transcriber as tr
from plugins.metrics.transcriber_train import load_or_build


@dataclasses.dataclass(frozen=True)
class TranscriberParams:
    root: str = tr.DEFAULT_ROOT  # where the transcriber's piano data and cached weights live
    recipe: Literal["default", "smoke"] = "default"  # smoke: a tiny one for CI (its numbers mean little)


class _Judge:
    """The cached transcriber on the metric's device, and the resampling of the data's rate to its rate."""

    def __init__(self, name: str, params: TranscriberParams, data_info: DataInfo | None, runtime):
        if data_info is not None and (data_info.kind != "audio" or data_info.sample_rate is None):
            raise ValueError(f"{name}: needs audio data with a sample rate, got {data_info.kind!r}")
        self.device = runtime.device if runtime is not None else torch.device("cpu")
        self.rate = data_info.sample_rate if data_info is not None else tr.SAMPLE_RATE
        dist = torch.distributed
        shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if shared and dist.get_rank() != 0:
            dist.barrier()  # rank 0 renders and trains first, so the ranks never write the same files
        try:
            self.net, self.meta = load_or_build(params.root, params.recipe, self.device)  # trains it when missing
        except DataError as exc:
            raise DataError(f"metric '{name}': its transcriber is trained on the rendered piano set in "
                            f"{params.root}: {exc}; install what is named, or remove '{name}' from metrics:") from exc
        finally:
            if shared and dist.get_rank() == 0:
                dist.barrier()

    def tags(self) -> dict[str, str]:
        t = self.meta["test"]
        return {"transcriber.recipe": self.meta["recipe_name"], "transcriber.sha256": self.meta["sha256"][:16],
                "transcriber.renderer": self.meta["renderer"].split("/")[-1],
                "transcriber.test_frame_f1": f"{t['f1']:.4f}"}

    def audio(self, x: Tensor) -> Tensor:  # (B, C, T) at the data's rate -> (B, C, T') at 22016 Hz, float32
        x = x.float().to(self.device)
        if self.rate != tr.SAMPLE_RATE:
            import torchaudio.functional as AF

            x = AF.resample(x, self.rate, tr.SAMPLE_RATE)
        return x

    @torch.no_grad()
    def embedding(self, x: Tensor) -> Tensor:  # (B, C, T) -> (B, frames, 256)
        with no_autocast():
            return self.net.embedding(self.audio(x))

    @torch.no_grad()
    def roll(self, x: Tensor, threshold: float) -> Tensor:  # (B, C, T) -> bool (B, frames, 88)
        with no_autocast():
            return torch.sigmoid(self.net(self.audio(x))) > threshold


class FrechetTranscriber(Metric):
    higher_is_better = {"frechet_transcriber": False}
    Params = TranscriberParams

    def __init__(self, params: TranscriberParams, *, representation=None, data_info: DataInfo | None = None,
                 runtime=None):
        self.judge = _Judge("frechet_transcriber", params, data_info, runtime)
        self.reset()

    def tags(self) -> dict[str, str]:
        return self.judge.tags()

    def reset(self) -> None:
        self.real, self.fake = GaussianStats(), GaussianStats()
        self.real_halves = (GaussianStats(), GaussianStats())
        self._items = 0

    def update(self, real: Tensor, fake: Tensor) -> None:
        fr = self.judge.embedding(real)  # (B, frames, 256)
        self.real.add(fr.flatten(0, 1))
        self.fake.add(self.judge.embedding(fake).flatten(0, 1))
        for i in range(fr.shape[0]):  # alternate items between the two halves of the floor estimate
            self.real_halves[(self._items + i) % 2].add(fr[i])
        self._items += fr.shape[0]

    def compute(self) -> dict[str, float]:
        out = {"frechet_transcriber": frechet_distance(*self.real.mean_cov(), *self.fake.mean_cov())}
        if self.real_halves[1].n >= 2:
            out["frechet_transcriber_real_floor"] = frechet_distance(*self.real_halves[0].mean_cov(),
                                                                     *self.real_halves[1].mean_cov())
        return out


def clean_roll(roll: Tensor, gap: int = 2, shortest: int = 3) -> Tensor:
    """bool (B, frames, 88) -> bool (B, frames, 88): per key, off-runs of at most ``gap`` frames between two
    on-frames filled (morphological closing in time), then on-runs shorter than ``shortest`` frames removed
    (opening). Kernels are odd, centred; the clip's edges are not eroded."""
    x = roll.float().transpose(1, 2)  # (B, 88, frames)

    def dilate(v: Tensor, k: int) -> Tensor:
        return F.max_pool1d(v, k, 1, k // 2) if k > 1 else v

    def erode(v: Tensor, k: int) -> Tensor:
        return -dilate(-v, k)

    k_gap = gap + 1 + (gap % 2 == 1)  # odd kernel that bridges `gap` frames
    x = erode(dilate(x, k_gap), k_gap)
    k_run = shortest if shortest % 2 == 1 else shortest + 1
    x = dilate(erode(x, k_run), k_run)
    return x.transpose(1, 2) > 0.5


class RollStats:
    """Running counts of one set's piano rolls: frames, active frames, onsets, keys on, pitch classes."""

    def __init__(self):
        self.frames = self.active = self.onsets = self.cells = 0
        self.pitch_classes = torch.zeros(12, dtype=torch.float64)

    def add(self, roll: Tensor) -> None:  # bool (B, frames, 88)
        roll = roll.cpu()
        on = roll.sum(-1)  # (B, frames) keys on per frame
        self.frames += roll.shape[0] * roll.shape[1]
        self.active += int((on > 0).sum())
        self.cells += int(on.sum())
        self.onsets += int((roll[:, 1:] & ~roll[:, :-1]).sum() + roll[:, 0].sum())  # a key on at frame 0 counts
        per_key = roll.sum((0, 1)).double()  # (88,), key 0 = A0 (pitch class 9)
        self.pitch_classes += torch.zeros(12, dtype=torch.float64).index_add_(
            0, (torch.arange(tr.KEYS) + tr.LOWEST_KEY) % 12, per_key)

    def summary(self, name: str) -> dict[str, float]:
        if self.frames == 0:
            raise ValueError("note_stats: compute() before any update()")
        seconds = self.frames * tr.HOP / tr.SAMPLE_RATE
        return {f"notes_active_frames_{name}_pct": 100.0 * self.active / self.frames,
                f"notes_per_s_{name}": self.onsets / seconds,
                f"notes_polyphony_{name}": self.cells / self.active if self.active else 0.0}


def pitch_class_distance(a: Tensor, b: Tensor) -> float:
    """Total variation distance of two pitch-class count vectors (12,), 0..1; 1 when either has no notes."""
    if a.sum() <= 0 or b.sum() <= 0:
        return 1.0
    return float(0.5 * (a / a.sum() - b / b.sum()).abs().sum())


class NoteStats(Metric):
    higher_is_better = {"notes_pitch_class_distance": False}
    @dataclasses.dataclass(frozen=True)
    class Params(TranscriberParams):
        threshold: float = 0.5  # key probability above which a key counts as sounding in a frame

    def __init__(self, params: "NoteStats.Params", *, representation=None, data_info: DataInfo | None = None,
                 runtime=None):
        if not 0.0 < params.threshold < 1.0:
            raise ValueError(f"note_stats: threshold must be in (0, 1), got {params.threshold}")
        self.params = params
        self.judge = _Judge("note_stats", params, data_info, runtime)
        self.reset()

    def tags(self) -> dict[str, str]:
        return self.judge.tags()

    def reset(self) -> None:
        self.sets = {"real": RollStats(), "fake": RollStats()}

    def update(self, real: Tensor, fake: Tensor) -> None:
        self.sets["real"].add(clean_roll(self.judge.roll(real, self.params.threshold)))
        self.sets["fake"].add(clean_roll(self.judge.roll(fake, self.params.threshold)))

    def compute(self) -> dict[str, float]:
        out = self.sets["real"].summary("real") | self.sets["fake"].summary("fake")
        out["notes_pitch_class_distance"] = pitch_class_distance(self.sets["real"].pitch_classes,
                                                                 self.sets["fake"].pitch_classes)
        return out


@hookimpl
def register_metrics(register):
    register("frechet_transcriber", FrechetTranscriber)
    register("note_stats", NoteStats)
