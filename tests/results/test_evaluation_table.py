"""The evaluation's table: per-configuration mean ± std, its Markdown, and the parameter counts beside it."""
from __future__ import annotations

import doctest
import math

import pytest

from marktune.mark.config import MarkConfig
from marktune.results import evaluation_table
from marktune.results.evaluation_table import aggregate, format_markdown
from marktune.results.pareto import parameter_counts


def test_docstring_examples_run():
    failures, tried = doctest.testmod(evaluation_table)
    assert tried > 0 and failures == 0


def test_parameter_counts_match_the_built_model():
    from marktune.mark.model import FeatureExtractor, KnowledgeBase, MaskGenerator, TaskHead, count_parameters

    cfg = MarkConfig()  # the paper's CIFAR-100 model, 5 classes per task
    kb, task = parameter_counts(cfg)
    real_kb = KnowledgeBase()
    assert kb == count_parameters(real_kb)
    assert task == (count_parameters(FeatureExtractor()) + count_parameters(TaskHead(128, 5))
                    + count_parameters(MaskGenerator(latent_dim=128, block_channels=real_kb.channels)))


def test_aggregate_mean_std_and_markdown():
    recs = [{"configuration": "a", "kind": "best", "seed": s, "status": "COMPLETE", "test_acc": acc, "bwt": -0.01,
             "val_acc": acc, "wall_seconds": 2.0, "kb_params": 1000, "task_params": 500, "settings": "{}"}
            for s, acc in ((1000, 0.8), (1001, 0.9))]
    recs.append({**recs[0], "configuration": "b", "seed": 1000, "status": "ERROR", "test_acc": math.nan})
    a, b = aggregate(recs)
    assert a.ok == 2 and a.test_acc[0] == pytest.approx(0.85) and a.test_acc[1] == pytest.approx(0.0707, abs=1e-4)
    assert b.ok == 0 and math.isnan(b.test_acc[0])
    text = format_markdown([a, b], experiment="e", seeds=[1000, 1001])
    assert "| a | 2/2 | 85.00 ± 7.07 | -1.00 ± 0.00 |" in text and "| b | 0/1 | - |" in text
