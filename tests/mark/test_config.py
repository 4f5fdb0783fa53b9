import pytest

from marktune.mark.config import ConfigError, MarkConfig, parse_overrides


def test_paper_defaults():
    cfg = MarkConfig()
    assert (cfg.benchmark, cfg.tasks, cfg.kb_depth, cfg.kb_width, cfg.latent_dim) == ("cifar100", 20, 3, 64, 128)
    assert (cfg.lr_task, cfg.lr_meta, cfg.meta_step, cfg.mask_lr) == (0.1, 0.01, 0.1, 0.1)
    assert (cfg.epochs, cfg.batch_size, cfg.val_fraction) == (50, 128, 0.15)
    assert (cfg.meta_epochs, cfg.mini_tasks, cfg.inner_steps, cfg.meta_update) == (10, 10, 40, "reptile")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("benchmark: fmnist\nepochs: 7\nlr_meta: 0.02\n")
    cfg = MarkConfig.from_sources(path=path, overrides=["epochs=3", "mask_activation=sigmoid"])
    assert (cfg.benchmark, cfg.epochs, cfg.lr_meta, cfg.mask_activation, cfg.tasks) == \
        ("fmnist", 3, 0.02, "sigmoid", 5)


@pytest.mark.parametrize("overrides,key", [
    (["kb_depth=9"], "kb_depth"),
    (["lr_meta=-0.1"], "lr_meta"),
    (["mini_tasks=0"], "mini_tasks"),
    (["meta_update=maml"], "meta_update"),
    (["val_fraction=1.5"], "val_fraction"),
    (["epochs=2.5"], "epochs"),
    (["lr_task=abc"], "lr_task"),
    (["benchmark=mnist"], "benchmark"),
    (["momentum=1"], "momentum"),
    (["kb_grad_clip=0"], "kb_grad_clip"),
])
def test_bad_values_name_the_key_and_range(overrides, key):
    with pytest.raises(ConfigError, match=key):
        MarkConfig.from_sources(overrides=overrides)


def test_depth_limit_depends_on_image_size():
    MarkConfig(benchmark="miniimagenet", kb_depth=5)  # 84 px allows 5
    with pytest.raises(ConfigError, match=r"kb_depth=5.*1\.\.4"):
        MarkConfig(benchmark="cifar100", kb_depth=5)


def test_unknown_key_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown config key.*lr_mtea.*Known keys.*lr_meta"):
        MarkConfig.from_sources(overrides=["lr_mtea=0.1"])


def test_override_syntax():
    assert parse_overrides(["a=1", "b=1e-3", "c=relu", "d=true"]) == {"a": 1, "b": 1e-3, "c": "relu", "d": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


@pytest.mark.parametrize("values,message", [
    (dict(benchmark="cifar100", num_tasks=3), "100 classes of cifar100 cannot be cut into 3 tasks.*one of 1, 2, 4, 5"),
    (dict(benchmark="miniimagenet", num_tasks=7), "cannot be cut into 7 tasks"),
    (dict(benchmark="fmnist", num_tasks=10), "leaves 1 class per task"),
    (dict(benchmark="digits", class_order=[0, 1, 2]), "permutation of the 10 class ids"),
    (dict(benchmark="digits", class_order=[0] * 10), "with repeats"),
    (dict(benchmark="digits", data_seed=-1), "data_seed"),
])
def test_a_split_the_benchmark_cannot_make_is_refused_without_data(values, message):
    # every benchmark's class count is known without reading a file
    with pytest.raises(ConfigError, match=message):
        MarkConfig(**values)


def test_valid_splits_and_orders_are_accepted():
    assert MarkConfig(benchmark="cifar100", num_tasks=10).tasks == 10
    assert MarkConfig(benchmark="synthetic", num_tasks=7).num_classes == 14
    cfg = MarkConfig.from_sources(overrides=["benchmark=digits", "class_order=[9,8,7,6,5,4,3,2,1,0]"])
    assert cfg.class_order == list(range(9, -1, -1)) and cfg.split_seed == cfg.seed
    assert MarkConfig(benchmark="digits", seed=3, data_seed=7).split_seed == 7


def test_the_reference_path_is_not_a_setting():
    # the plain reference path is a test oracle (tests/oracles.py), injected as MarkLearner(compute=...):
    # a config or a space that asks for it with the old key meets the ordinary unknown-key error
    with pytest.raises(ConfigError, match=r"unknown config key\(s\): fast\. Known keys: benchmark"):
        MarkConfig.from_dict({"benchmark": "synthetic", "fast": False})
    with pytest.raises(ConfigError, match="unknown config key"):
        MarkConfig.from_sources(overrides=["fast=false"])
