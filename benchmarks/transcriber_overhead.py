"""python benchmarks/transcriber_overhead.py -- Warm-cache cost the two transcriber metrics add to the demo: build both (cache check) + 3 evaluations of
16 real + 16 fake 3 s clips in batches of 4, as the demo's eval does; beside it the same for frechet_mdct."""
import time, torch, sys
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from framework.protocols import DataInfo
from framework.runtime import Runtime
from plugins.metrics.notes import FrechetTranscriber, NoteStats
from plugins.metrics.audio import FrechetMdct
torch.set_grad_enabled(False)
info = DataInfo(kind="audio", shape=(2, 65472), sample_rate=22016)
t = time.perf_counter()
ms = [FrechetTranscriber(FrechetTranscriber.Params(), data_info=info, runtime=Runtime()),
      NoteStats(NoteStats.Params(), data_info=info, runtime=Runtime())]
build = time.perf_counter() - t
base = FrechetMdct(FrechetMdct.Params(), representation=None, data_info=info, runtime=Runtime())
x = torch.randn(4, 2, 65472) * 0.1
def evals(metrics):
    t = time.perf_counter()
    for _ in range(3):
        for m in metrics: m.reset()
        for _ in range(4):
            for m in metrics: m.update(x, x.flip(0))
        for m in metrics: m.compute()
    return time.perf_counter() - t
print(f"build (warm cache check) {build:.2f} s; 3 evaluations: transcriber metrics {evals(ms):.2f} s, frechet_mdct {evals([base]):.2f} s")
