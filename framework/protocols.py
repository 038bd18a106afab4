"""The plugin interfaces, with the tensor shapes at every boundary.

Plugins subclass these abstract bases (or just provide the same methods). Every plugin class has a
nested frozen dataclass ``Params`` (the schema of its YAML ``params:``) and is built by
:mod:`framework.build` as ``cls(cls.Params(**params), **injected)`` with the keyword arguments listed
in each class below.

Shape vocabulary (channels first everywhere): ``B`` batch, ``C`` channels, ``T`` samples, ``N`` blocks
(time), ``K`` bins (frequency), ``H``/``W`` image height/width. Audio is ``(B, C, T)`` in [-1, 1];
images are ``(B, C, H, W)`` in [-1, 1].

What the core does with them (see :mod:`framework.runner`): it draws batches ``x`` from the dataset,
moves them to the device, encodes them ``z = representation.encode(x)`` without gradients, and calls
``model.train_step(z, step)``. For evaluation it decodes ``model.sample(n)`` back to the data domain
and feeds real and generated batches to each metric's ``update``. Class-conditional models (``Model.num_classes``
> 0) need a labelled dataset (``DataInfo.num_classes``, ``Dataset.label``); the core then passes each batch's
labels as ``train_step(z, step, labels=y)`` and, in evaluation, the real batch's labels as ``sample(n, labels=y)``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a dataset yields, item by item.

    kind: ``"audio"`` (items ``(C, T)``) or ``"image"`` (items ``(C, H, W)``).
    shape: the shape of one item, channels first.
    sample_rate: Hz, audio only.
    tags: short provenance strings logged as MLflow tags of every run that uses the data
        (for example the renderer a synthetic piano set was made with).
    num_classes: how many classes :meth:`Dataset.label` distinguishes (labels ``0 .. num_classes - 1``);
        0: the items carry no labels.
    """

    kind: str
    shape: tuple[int, ...]
    sample_rate: int | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    num_classes: int = 0


class Dataset(torch.utils.data.Dataset, ABC):
    """A map-style dataset of float32 signals in [-1, 1], each ``info.shape``.

    Built as ``cls(params, split=split)`` with ``split`` in ``{"train", "validation", "test"}``.
    ``__getitem__`` must be deterministic for a given index (random crops derive their offset from
    the index and a seed), so that a resumed run sees exactly the batches an uninterrupted run sees.
    """

    Params: ClassVar[type]
    info: DataInfo

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> Tensor:  # -> (*info.shape), float32
        ...

    def label(self, index: int) -> int:
        """The class of item ``index``, in ``0 .. info.num_classes - 1`` (only datasets with ``info.num_classes``
        > 0 implement it; class-conditional models train on these labels)."""
        raise NotImplementedError(f"{type(self).__name__} has no labels (info.num_classes is 0)")

    @classmethod
    def describe(cls, params: Any) -> DataInfo:
        """The :class:`DataInfo` the dataset built from ``params`` would have (its ``info``), for commands that
        need only the data's shape (``bench``). The default builds the train split; datasets whose shape follows
        from their params override it so that no data is read or prepared."""
        return cls(params, split="train").info

    @classmethod
    def is_prepared(cls, params: Any) -> bool:
        """Whether :meth:`prepare` has already produced what ``__init__`` needs (the runner prepares
        automatically, with a message, when it has not)."""
        return True

    @classmethod
    def prepare(cls, params: Any) -> str:
        """Obtain or convert the data once (``python -m framework prepare SPEC``); return a summary line.

        The default has nothing to prepare. Long work shows a progress bar and is resumable.
        """
        return f"{cls.__name__}: nothing to prepare"


class Representation(nn.Module, ABC):
    """What the networks see: a differentiable, GPU-capable transform of the data.

    Built as ``cls(params, data_info=info)``.
    ``shape``: the shape of one encoded item, e.g. ``(C, N, K)`` for an MDCT of ``(C, T)`` audio.
    """

    Params: ClassVar[type]
    shape: tuple[int, ...]

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:  # (B, *data_info.shape) -> (B, *shape)
        ...

    @abstractmethod
    def decode(self, z: Tensor) -> Tensor:  # (B, *shape) -> (B, *data_info.shape)
        ...

    def critic_view(self, z: Tensor) -> Tensor:  # (B, *shape) -> (B, *shape)
        """What the critic is shown of ``z`` (reals and fakes alike); identity unless overridden."""
        return z


class Loss(ABC):
    """Named, unweighted loss terms; the spec's ``loss.weights`` weigh them.

    Built as ``cls(params, weights=weights)``, where ``weights`` is ``default_weights`` updated by the
    spec. Term names are ``d/<name>`` (critic/discriminator) and ``g/<name>`` (generator); ``terms``
    lists every name a loss can return, so the spec's weights are validated before a run starts.
    ``critic`` maps a batch ``(B, *shape)`` to scores ``(B,)`` or ``(B, 1)``.
    """

    Params: ClassVar[type]
    default_weights: ClassVar[Mapping[str, float]]

    def __init__(self, params: Any, *, weights: Mapping[str, float] | None = None):
        self.params = params
        self.weights = dict(self.default_weights)
        self.weights.update(weights or {})

    @abstractmethod
    def discriminator_terms(self, critic: Callable[[Tensor], Tensor], real: Tensor,
                            fake: Tensor, step: int = 0) -> dict[str, Tensor]:
        """Critic terms for real and fake batches ``(B, *shape)``; ``step`` lets lazy regularisers skip steps."""

    @abstractmethod
    def generator_terms(self, critic: Callable[[Tensor], Tensor], fake: Tensor) -> dict[str, Tensor]: ...

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The weighted sum ``sum(weights[name] * term)`` of the given terms (a 0-dim tensor)."""
        return sum(self.weights[name] * value for name, value in terms.items())  # type: ignore[return-value]


class Model(nn.Module, ABC):
    """Owns its networks and optimisers and performs one optimisation step per call.

    Built as ``cls(params, representation=repr, loss=loss, data_info=info, runtime=runtime)``; the
    runner moves it to ``runtime.device`` before the first step. ``step`` counts calls of
    ``train_step`` (for a WGAN: critic iterations), starting at 0.

    ``num_classes`` > 0 makes the model class-conditional: the runner then calls ``train_step(batch, step,
    labels=y)`` and ``sample(n, labels=y)`` with ``y`` of shape ``(B,)``, int64 (the real items' classes);
    ``sample`` without labels draws them uniformly.
    """

    Params: ClassVar[type]
    optimizers: dict[str, torch.optim.Optimizer]
    num_classes: int = 0

    @abstractmethod
    def train_step(self, batch: Tensor, step: int) -> dict[str, Tensor]:
        """One step on an encoded batch ``(B, *representation.shape)``; returns named 0-dim tensors.

        Names are logged as ``train/<name>``; return tensors (not floats) so that nothing forces a
        host-device synchronisation inside the step.
        """

    @abstractmethod
    def sample(self, n: int, truncation: float | None = None) -> Tensor:
        """``n`` generated items ``(n, *representation.shape)``; ``truncation``: latent clip (None: none)."""

    def score(self, z: Tensor) -> Tensor | None:
        """Critic scores ``(B,)`` of encoded items, used to pick best/median/worst samples; None: no critic."""
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: module tensors and optimiser states."""
        return {"modules": self.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["modules"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])


class Metric(ABC):
    """A streaming evaluation metric on data-domain tensors.

    Built as ``cls(params, representation=repr, data_info=info, runtime=runtime)``. ``update`` gets a
    real and a generated batch, both ``(B, *data_info.shape)`` on ``runtime.device``; ``compute``
    returns named floats, logged as ``eval/<name>``. ``tags`` (optional) returns provenance strings logged as
    MLflow tags of the run, e.g. which trained judge network the metric's numbers come from.

    ``higher_is_better`` names the quality figures among the names ``compute`` returns, each with its direction
    (False: a distance or error, 0 is best), the plugin's headline figure first; ``report`` reads it to choose
    and orient its quality axis. Names left out (real-vs-real floors, counts, diagnostics) are not quality figures.
    """

    Params: ClassVar[type]
    higher_is_better: ClassVar[Mapping[str, bool]] = {}

    def tags(self) -> dict[str, str]:
        return {}

    @abstractmethod
    def update(self, real: Tensor, fake: Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    @abstractmethod
    def reset(self) -> None: ...
