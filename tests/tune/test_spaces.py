"""Search spaces and the search command's flags: every mistake is caught before Ray starts."""
import subprocess
import sys

import pytest
import yaml

from marktune.cli import search
from marktune.cli.search import SearchError, build_parser, plan_from_args
from marktune.results.noise import SeedNoise
from marktune.tune.runs.preflight import check_address
from marktune.tune.spaces import SpaceError, available_spaces, load_space


def write_space(tmp_path, **changes):
    data = yaml.safe_load(open(load_space("digits").path))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["cifar100", "miniimagenet", "fmnist", "digits"])
def test_shipped_spaces_load_and_search_the_required_parameters(name):
    space = load_space(name)
    required = {"lr_meta", "meta_step", "lr_mask", "mask_hidden", "mask_activation", "kb_depth",
                "kb_width", "mini_tasks", "inner_steps"}
    assert required <= set(space.params)
    assert space.benchmark == name and name in available_spaces()
    domains = space.param_space()
    assert set(space.params) <= set(domains)


def test_paper_defaults_fixed_for_cifar100():
    cfg = load_space("cifar100").default_trial_config()
    assert (cfg.epochs, cfg.kb_depth, cfg.kb_width, cfg.tasks) == (50, 3, 64, 20)


@pytest.mark.parametrize("search,message", [
    ({"lr_metaa": {"type": "loguniform", "low": 0.001, "high": 0.1}}, "'lr_metaa' is not a learner setting"),
    ({"lr_meta": {"type": "loguniform", "low": 0.1, "high": 0.01}}, "low must be < high"),
    ({"lr_meta": {"type": "loguniform", "low": 0.0, "high": 0.01}}, "needs low > 0"),
    ({"kb_depth": {"type": "int", "low": 2, "high": 9}}, "kb_depth.*9.*refused"),
    ({"lr_meta": {"type": "gaussian", "low": 0.1, "high": 1}}, "unknown type 'gaussian'"),
    ({"mask_activation": {"type": "choice", "values": ["relu", "tanh"]}}, "tanh.*refused"),
])
def test_bad_search_entries(tmp_path, search, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path, search=search))


def test_bad_fixed_and_defaults(tmp_path):
    with pytest.raises(SpaceError, match="fixed setting 'epoch' is not a learner setting"):
        load_space(write_space(tmp_path, fixed={"epoch": 3}))
    with pytest.raises(SpaceError, match="defaults.reduction_factor"):
        load_space(write_space(tmp_path, defaults={"reduction_factor": 1}))
    with pytest.raises(SpaceError, match="missing 'benchmark'"):
        load_space(write_space(tmp_path, benchmark=None))


def test_space_noise_is_parsed_checked_and_reaches_the_plan(tmp_path):
    path = write_space(tmp_path, noise={"seed_sd": 0.011, "measured": "docs/results/digits-seeds.md"})
    space = load_space(path)
    assert (space.noise.seed_sd, space.noise.measured) == (0.011, "docs/results/digits-seeds.md")
    plan = plan_from_args(build_parser().parse_args(["--space", str(path)]))
    assert plan.space.noise.seed_sd == 0.011  # what the summary's tie rule uses
    assert load_space("cifar100").noise.seed_sd is None  # not measured: unknown
    assert load_space("fmnist").noise == SeedNoise(seed_sd=0.024, measured="docs/benchmark.md")
    assert load_space("digits").noise == SeedNoise(seed_sd=0.024, measured="docs/benchmark.md")  # the dense table's
    for noise, message in (({"seed_sd": -0.1, "measured": "m.md"}, "noise.seed_sd must be a number"),
                           ({"seed_sd": "big", "measured": "m.md"}, "noise.seed_sd must be a number"),
                           ({"seed_sd": 0.01}, "needs measured"),
                           ({"seed_sd": 0.01, "measured": "m.md", "runs": 3}, "unknown key.*runs"),
                           (0.01, "noise must be a mapping")):
        with pytest.raises(SpaceError, match=message) as err:
            load_space(write_space(tmp_path, noise=noise))
        assert str(path) in str(err.value)  # names the file


def test_unknown_space_lists_available():
    with pytest.raises(SpaceError, match="unknown search space 'cifar10'.*cifar100.*digits"):
        load_space("cifar10")


@pytest.mark.parametrize("argv,message", [
    (["--space", "nope"], "unknown search space"),
    (["--space", "digits", "--samples", "0"], "--samples"),
    (["--space", "digits", "--gpus-per-trial", "1.5"], "--gpus-per-trial"),
    (["--space", "digits", "--set", "epochs=-1"], "epochs"),
    (["--space", "digits", "--set", "lr_mtea=1"], "unknown config key"),
    (["--space", "digits", "--resume"], "--resume needs --name"),
])
def test_bad_flags_are_refused_by_the_plan(argv, message):
    args = build_parser().parse_args(argv)
    with pytest.raises((SpaceError, SearchError, ValueError), match=message):
        plan_from_args(args)


def test_bad_input_fails_fast_before_ray_starts(tmp_path):
    # the one search in its own process here: the exit status and the message of `python -m`
    proc = subprocess.run([sys.executable, "-m", "marktune.search", "--space", "digits", "--set", "kb_depth=7",
                           "--storage", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "kb_depth" in proc.stderr and "Traceback" not in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    assert not any(tmp_path.iterdir())  # nothing was written


def test_missing_data_set_fails_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = search.main(["--space", "cifar100", "--data-dir", str(empty), "--storage", str(tmp_path / "results")])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "CIFAR-100 not found" in err and str(empty / "cifar-100-python") in err
    assert "Traceback" not in err
    assert "Started a local Ray instance" not in err + out
    assert not (tmp_path / "results").exists()


def test_unreachable_address_is_a_clear_error():
    # a closed port answers at once; a silent host is bounded by the connect timeout
    with pytest.raises(SearchError, match="cannot reach the Ray cluster"):
        check_address("127.0.0.1:1", timeout=3)
    with pytest.raises(SearchError, match="expected 'auto'"):
        check_address("nonsense")


# MARK.md, "Presets" (the released configs/*.yml), restated once: the spaces' fixed settings.
AUTHORS_PRESETS = {
    "cifar100": {"epochs": 50, "meta_epochs": 10, "mini_tasks": 10, "inner_steps": 40, "lr_task": 0.1,
                 "lr_meta": 0.01, "latent_dim": 128, "fe_channels": 32, "val_fraction": 0.15,
                 "batch_size": 128, "seed": 48},
    "miniimagenet": {"epochs": 50, "meta_epochs": 10, "mini_tasks": 10, "inner_steps": 40, "lr_task": 0.01,
                     "lr_meta": 0.001, "latent_dim": 256, "fe_channels": 8, "val_fraction": 0.02,
                     "batch_size": 128, "seed": 48},
}


@pytest.mark.parametrize("name", sorted(AUTHORS_PRESETS))
def test_paper_spaces_fix_the_authors_presets(name):
    space = load_space(name)
    assert space.fixed == AUTHORS_PRESETS[name]
    cfg = space.default_trial_config()
    # what MARK.md leaves to the released code stays at the learner's (released) defaults
    assert (cfg.mask_init, cfg.meta_step, cfg.meta_weight_decay, cfg.use_masks, cfg.fe_bn_train) == \
        ("default", 0.1, 0.1, True, False)
    # every value says where it comes from
    fixed_lines = space.path.read_text().split("fixed:")[1].split("search:")[0].splitlines()
    assert all("config_" in line for line in fixed_lines if line.strip() and not line.startswith("#"))


def test_mask_init_fixed_on_the_small_spaces_and_searched_on_cifar100():
    for name in ("fmnist", "digits"):
        assert load_space(name).fixed["mask_init"] == "identity"
    assert set(load_space("cifar100").params["mask_init"].values) == {"default", "identity"}
