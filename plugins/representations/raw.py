"""The ``raw`` representation: the networks see the data itself (waveform samples or pixels).

The baseline of the representation ablations (MP3net's MDCT vs raw waveform). By default encode and decode
are the identity, so ``shape`` equals the data shape, ``(C, T)`` for audio or ``(C, H, W)`` for images.
With ``block_size: K`` audio is cut into blocks of K samples, ``(C, T) -> (C, T / K + 1, K)`` (one zero block
appended), the same shape the MDCT gives: the same 2-D network then sees time-domain samples instead of
MDCT coefficients, which is the MDCT ablation at equal model size.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from framework import hookimpl
from framework.errors import DataError
from framework.protocols import DataInfo, Representation


class Raw(Representation):
    @dataclasses.dataclass(frozen=True)
    class Params:
        block_size: int = 0  # audio only: > 0 cuts (C, T) into (C, T / K + 1, K) blocks of K samples

    def __init__(self, params: "Raw.Params", *, data_info: DataInfo):
        super().__init__()
        self.params, self.data_shape = params, tuple(data_info.shape)
        k = params.block_size
        if k:
            if data_info.kind != "audio" or data_info.shape[-1] % k:
                raise DataError(f"representation 'raw' with block_size {k} needs audio whose length is a multiple "
                                f"of {k}, got {data_info.kind} {data_info.shape}")
            c, t = data_info.shape
            self.shape = (c, t // k + 1, k)
        else:
            self.shape = self.data_shape

    def encode(self, x: Tensor) -> Tensor:  # (B, *data) -> (B, *shape)
        k = self.params.block_size
        if not k:
            return x
        return F.pad(x, (0, k)).unflatten(-1, (-1, k))  # (B, C, T) -> (B, C, T / K + 1, K)

    def decode(self, z: Tensor) -> Tensor:  # (B, *shape) -> (B, *data), clipped to the data range
        if self.params.block_size:
            z = z.flatten(-2)[..., :self.data_shape[-1]]
        return z.clamp(-1.0, 1.0)


@hookimpl
def register_representations(register):
    register("raw", Raw)
