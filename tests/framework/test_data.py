"""Batch sampling: resuming from a consumed-position count reproduces the stream, ranks partition it,
and a different number of processes continues where the old ones stopped; labelled batches."""

import itertools

import pytest
import torch

from framework.data import StepBatchSampler, train_loader


def take(sampler, steps):
    return list(itertools.islice(iter(sampler), steps))


def test_resume_from_position_continues_the_same_stream():
    full = take(StepBatchSampler(10, 3, seed=5), 8)
    resumed = take(StepBatchSampler(10, 3, seed=5, start=3 * 3), 5)
    assert resumed == full[3:]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    flat = [i for b in take(StepBatchSampler(12, 4, seed=1), 6) for i in b]
    assert sorted(flat[:12]) == list(range(12)) and sorted(flat[12:]) == list(range(12))
    assert flat[:12] != flat[12:]


def test_ranks_partition_each_step_and_world_size_can_change():
    single = [i for b in take(StepBatchSampler(20, 2, seed=0), 7) for i in b]
    r0 = take(StepBatchSampler(20, 2, seed=0, rank=0, world_size=2), 3)
    r1 = take(StepBatchSampler(20, 2, seed=0, rank=1, world_size=2), 3)
    assert [i for s in range(3) for i in r0[s] + r1[s]] == single[:12]
    # 2 processes consumed 3 steps x 2 ranks x 2 items = 12 positions; 1 process resumes from there
    assert take(StepBatchSampler(20, 2, seed=0, start=12), 1)[0] == single[12:14]


def test_labelled_batches_pair_items_with_their_labels():
    from framework.data import Labelled
    from plugins.datasets.synthetic import SyntheticImages

    ds = SyntheticImages(SyntheticImages.Params(size=20, classes=3), split="train")
    assert ds.info.num_classes == 3
    x, y = next(iter(train_loader(Labelled(ds), 5, seed=0, start=0, rank=0, world_size=1, num_workers=0,
                                  pin_memory=False)))
    idx = next(iter(StepBatchSampler(20, 5, seed=0)))
    assert x.shape == (5, 1, 28, 28) and y.dtype == torch.int64 and y.tolist() == [i % 3 for i in idx]
    assert torch.equal(x[0], ds[idx[0]])
    with pytest.raises(NotImplementedError, match="no labels"):
        SyntheticImages(SyntheticImages.Params(size=4), split="train").label(0)
