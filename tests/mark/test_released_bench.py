"""The released-code adapter and the divergence-rate bench (bench/released.py, bench/divergence_rates.py).

The released code itself is not here (it is not a dependency, and tests fetch nothing), so
:func:`run_released` runs on a stand-in checkout with the released API: a ``training_procedure``
that calls the released phase functions in the released order.
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import load_bench
from marktune.mark.config import MarkConfig

released = load_bench("released")
rates = load_bench("divergence_rates")

STAND_IN = {
    "utils.py": "",
    "models/__init__.py": "",
    "models/conv.py": """
        import torch
        class Net(torch.nn.Module):
            def __init__(self, args, device):
                super().__init__()
                self.only_shared = False
                self.private = torch.nn.Module()
                self.private.linear = torch.nn.ModuleList(
                    torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, c), torch.nn.ReLU())
                                        for c in (64, 128, 256)) for _ in range(args.ntasks))
                self.head = torch.nn.ModuleList(torch.nn.Linear(4, c) for _, c in args.taskcla)
            def forward(self, x, t):
                return self.head[t](x.flatten(1)[:, :4])
        """,
    "approach.py": """
        import torch
        NAN_IN = None  # the phase whose loss the stand-in makes NaN
        def _loss(net, t, loader, criterion, phase):
            x, y, _ = next(iter(loader))
            out = net(x, t)
            if phase == NAN_IN:
                out = out * float('nan')
            return criterion(out, y)
        def train_representation(args, net, dataloader, t, criterion, device):
            _loss(net, t, dataloader['train'], criterion, 'feature')
        def traditional_training(args, net, loader, val, t, opti, criterion, device):
            _loss(net, t, loader, criterion, 'kb' if net.only_shared else 'mask/consolidation')
            return 1.0, 0.0, []
        def meta_training(args, net, loader, t, opti, criterion, device):
            _loss(net, t, loader, criterion, 'meta')
            return 1.0, 0.0
        def test(net, t, loader, criterion, device, task_pri=None):
            x, y, _ = next(iter(loader))
            return float((net(x, t).argmax(1) == y).float().mean()), 0.0
        def training_procedure(args, net, t, dataloader, criterion, device):
            train_representation(args, net, dataloader, t, criterion, device)
            if t == 0:
                net.only_shared = True
                traditional_training(args, net, dataloader['train'], None, t, None, criterion, device)
                net.only_shared = False
            traditional_training(args, net, dataloader['train'], None, t, None, criterion, device)
            for _ in range(args.meta_epochs):
                meta_training(args, net, dataloader['train'], t, None, criterion, device)
                test(net, t, dataloader['valid'], criterion, device)
            traditional_training(args, net, dataloader['train'], None, t, None, criterion, device)
        """,
}


@pytest.fixture
def stand_in(tmp_path):
    def make(nan_in=None):
        for name, text in STAND_IN.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            text = textwrap.dedent(text)
            if name == "approach.py" and nan_in:
                text = text.replace("NAN_IN = None", f"NAN_IN = {nan_in!r}")
            path.write_text(text)
        return tmp_path
    return make


def synthetic(**overrides) -> MarkConfig:
    return MarkConfig(**{"benchmark": "synthetic", "num_tasks": 3, "synthetic_images_per_class": 20,
                         "epochs": 1, "meta_epochs": 2, "meta_update": "seed", **overrides})


def test_a_folder_without_the_released_files_is_refused_with_how_to_get_them(tmp_path):
    with pytest.raises(released.ReleasedCodeMissing, match="approach.py.*git clone"):
        released.check_checkout(tmp_path)


def test_released_args_carry_the_settings_and_refuse_what_the_released_code_cannot_run():
    args = released.released_args(synthetic(inner_steps=7, mini_tasks=4, lr_meta=0.02, epochs=2))
    assert (args.inner_loop, args.mini_tasks, args.lr_meta, args.feats_epochs) == (7, 4, 0.02, 2)
    assert args.ntasks == 3 and args.use_meta and not args.only_shared
    for bad in ({"kb_depth": 4}, {"meta_update": "reptile"}, {"kb_grad_clip": 1.0}, {"kb_epochs": 5}):
        with pytest.raises(ValueError, match="no setting for"):
            released.released_args(synthetic(**bad))


def test_released_loaders_serve_marktunes_split_as_x_y_x_batches():
    from marktune.data import load_benchmark_for

    cfg = synthetic()
    benchmark = load_benchmark_for(cfg)
    args = released.released_args(cfg)
    loaders = released.released_loaders(benchmark, args)
    assert len(loaders) == 3
    task = benchmark.tasks[1]
    xs, ys = [], []
    for x, y, x_again in loaders[1]["train"]:
        assert torch.equal(x, x_again)
        xs.append(x)
        ys.append(y)
    assert sorted(torch.cat(ys).tolist()) == sorted(task.train.y.tolist())
    assert torch.allclose(torch.cat(xs).sum(), benchmark.normalize(task.train.x).sum(), rtol=1e-4)
    assert loaders[1]["valid"].batch_size == int(cfg.batch_size * cfg.val_fraction)


def test_run_released_times_each_phase_and_leaves_no_module_behind(stand_in):
    run = released.run_released(stand_in(), synthetic(mask_init="identity"))
    assert run.tasks_done == 3 and run.nonfinite is None
    assert run.test.shape == (3, 3) and run.test[0, 1] == 0  # rows as the released main.run fills them
    assert all(run.phase_seconds[p] > 0 for p in released.PHASES)
    import sys
    assert "approach" not in sys.modules and "models.conv" not in sys.modules


def test_run_released_stops_after_the_tasks_asked_for(stand_in):
    run = released.run_released(stand_in(), synthetic(), tasks=1)
    assert run.tasks_done == 1 and run.test[1:].sum() == 0


@pytest.mark.parametrize("phase, expected", [("meta", "task 0, phase meta"), ("kb", "task 0, phase kb")])
def test_run_released_stops_at_the_first_non_finite_loss_and_names_where(stand_in, phase, expected):
    run = released.run_released(stand_in(nan_in=phase), synthetic())
    assert run.nonfinite == expected and run.tasks_done == 0


def test_parse_seeds_and_dead_tasks():
    assert rates.parse_seeds("48-50,7") == [48, 49, 50, 7]
    assert rates.dead_tasks([0.99, 0.55, 0.56, 0.2], [2, 2, 2, 5]) == [1, 3]


def test_summary_counts_each_outcome_with_exact_intervals_and_the_difference():
    rows = [{"setting": "s", "side": side, "seed": str(i), "outcome": outcome, "where": "",
             "acc": "0.9" if outcome != "non-finite" else ""}
            for side, outcomes in (("released", ["ok"] * 16), ("marktune", ["non-finite"] * 4 + ["ok"] * 12))
            for i, outcome in enumerate(outcomes)]
    text = rates.summary(rows)
    assert "released  non-finite 0/16 = 0.00 [0.00, 0.21]" in text  # Clopper-Pearson: 1 - 0.025**(1/16)
    assert "marktune  non-finite 4/16 = 0.25 [0.07, 0.52]" in text
    # Newcombe by hand: Wilson 4/16 = [0.102, 0.495], 0/16 = [0, 0.194];
    # 0.25 - sqrt(0.148**2 + 0.194**2) = 0.006, 0.25 + sqrt(0.245**2 + 0) = 0.495
    assert "marktune - released: +0.25 [+0.01, +0.49]" in text
