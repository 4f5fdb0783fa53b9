"""What the tests of tests/mark share: a learner on a tiny config, module snapshots, comparisons."""
import torch

from marktune.data import load_benchmark_for
from marktune.mark.learner import MarkLearner


def make(cfg, **kw):
    return MarkLearner(cfg, load_benchmark_for(cfg), verbose=0, **kw)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_changed(a, b):
    assert any(not torch.equal(a[k], b[k]) for k in a)
