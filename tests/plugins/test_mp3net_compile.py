"""torch.compile of MP3net's training step: a tiny model with the exact gradient penalty, compiled as
``train.compile: true`` compiles it (``Runtime.maybe_compile`` on G and D), makes the same losses as eager.

Backends: ``aot_eager`` traces G and D with dynamo and AOTAutograd (graph capture, the joint forward/backward
graph, the no-grad generator call inside the critic step) but runs the captured graphs with eager kernels; it takes
seconds, so CI runs it. ``inductor`` (the default backend, what ``train.compile: true`` uses) also generates and
builds C++/Triton kernels: it works on the 2-core development machine (g++ is there) but its first step takes
~5 minutes there, so the CPU case is marked ``slow`` and the CUDA case ``gpu`` (``python -m framework gpu-check``
runs it). The penalty's double backward runs eagerly by design (``Mp3Net._critic_d``).
"""

import dataclasses
import os

import pytest
import torch
from torch._dynamo.utils import counters

from framework.protocols import DataInfo
from framework.runtime import Runtime
from tests.plugins.test_mp3net import REG, TINY, Identity


@dataclasses.dataclass
class BackendRuntime(Runtime):
    """The runner's Runtime with ``compile`` on and a chosen torch.compile backend (the spec has no backend key)."""

    backend: str = "inductor"

    def maybe_compile(self, module):
        return torch.compile(module, backend=self.backend)


def build(runtime: Runtime):
    info = DataInfo(kind="audio", shape=(2, 128, 16), sample_rate=22016)
    loss_cls, cls = REG["losses"].get("wgan_gp").cls, REG["models"].get("mp3net").cls
    loss = loss_cls(loss_cls.Params(), weights={"d/gp": 3.0, "d/drift": 0.1})  # MP3net's weights, exact GP
    return cls(cls.Params(**TINY), representation=Identity(Identity.Params(), data_info=info), loss=loss,
               data_info=info, runtime=runtime).to(runtime.device)


def losses(runtime: Runtime, steps: int = 2, dtype=torch.float32) -> list[dict[str, float]]:
    """Per-step losses of a tiny MP3net (n_critic 2: step 0 updates D, step 1 D and then G)."""
    torch.manual_seed(0)
    model = build(runtime).to(dtype)
    batch = (torch.rand(4, 2, 128, 16, device=runtime.device) * 0.6 - 0.3).to(dtype)
    out = []
    for step in range(steps):
        torch.manual_seed(100 + step)  # the same latents and interpolation weights in both runs
        out.append({k: float(v) for k, v in model.train_step(batch, step).items()})
    return out


def assert_close(compiled, eager, rtol):
    assert [set(s) for s in compiled] == [set(s) for s in eager]
    assert "g/adv" in compiled[1] and "d/gp" in compiled[0]
    for c, e in zip(compiled, eager):
        for k in e:
            assert c[k] == pytest.approx(e[k], rel=rtol, abs=1e-7), k


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_training_step_equals_eager_aot_eager():
    eager = losses(Runtime())
    assert counters["stats"]["unique_graphs"] == 0
    compiled = losses(BackendRuntime(compile=True, backend="aot_eager"))
    assert counters["stats"]["unique_graphs"] >= 2  # G and D were captured, not run eagerly
    assert_close(compiled, eager, rtol=1e-5)


# Inductor's kernels sum in another order. In float32 that changes the critic's scores (~1e-5, differences of
# much larger activations) in their third digit, and Adam's first steps (~lr sign(gradient)) carry such
# differences into the weights: g/adv differed by 3 % on CPU. In float64 rounding cannot explain a difference.
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FRAMEWORK_INDUCTOR_CPU"),
                    reason="inductor's first CPU compile of this step takes ~5 min on 2 cores (more than the whole "
                           "suite's budget): set FRAMEWORK_INDUCTOR_CPU=1 to run it; the aot_eager test covers "
                           "dynamo + AOTAutograd here, and gpu-check runs the CUDA inductor test")
def test_compiled_training_step_equals_eager_inductor_cpu():
    eager = losses(Runtime(), dtype=torch.float64)
    assert_close(losses(BackendRuntime(compile=True), dtype=torch.float64), eager, rtol=1e-8)


@pytest.mark.gpu
def test_compiled_training_step_equals_eager_inductor_cuda():
    cuda = torch.device("cuda")
    eager = losses(Runtime(device=cuda), dtype=torch.float64)
    assert_close(losses(BackendRuntime(device=cuda, compile=True), dtype=torch.float64), eager, rtol=1e-8)
