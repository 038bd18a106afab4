"""The ``raw`` representation: the networks see the data itself (waveform samples or pixels).

The baseline of the representation ablations (MP3net's MDCT vs raw waveform): encode and decode are the
identity, so ``shape`` equals the data shape, ``(C, T)`` for audio or ``(C, H, W)`` for images.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from framework import hookimpl
from framework.protocols import DataInfo, Representation


class Raw(Representation):
    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: "Raw.Params", *, data_info: DataInfo):
        super().__init__()
        self.params = params
        self.shape = tuple(data_info.shape)

    def encode(self, x: Tensor) -> Tensor:  # (B, *shape) -> (B, *shape)
        return x

    def decode(self, z: Tensor) -> Tensor:  # (B, *shape) -> (B, *shape), clipped to the data range
        return z.clamp(-1.0, 1.0)


@hookimpl
def register_representations(register):
    register("raw", Raw)
