"""Issue 19: every value a search can propose is checked before Ray starts, and a space file's
duplicate key is an error naming its line (marktune.tune.space_checks, marktune.mark.yaml_io)."""
import textwrap

import pytest
import yaml

from marktune.cli import search
from marktune.mark.config import ConfigError, MarkConfig
from marktune.tune.spaces import SpaceError, available_spaces, load_space


def write_space(tmp_path, *, search_entries=None, fixed=None, defaults=None, benchmark="digits"):
    """The digits space with its searched settings replaced (or extended, for ``fixed``)."""
    data = yaml.safe_load(open(load_space("digits").path))
    data["benchmark"] = benchmark
    if search_entries is not None:
        data["search"] = search_entries
    if fixed is not None:
        data["fixed"] = fixed
    if defaults is not None:
        data["defaults"] = {**data["defaults"], **defaults}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_search(argv, capsys, monkeypatch, tmp_path):
    """``marktune.search`` in-process; Ray must never be started."""
    monkeypatch.setattr(search, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = search.main([*argv, "--storage", str(tmp_path / "results"), "-q"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()  # nothing written
    return code, err


# ---------------------------------------------------------------- the distribution against the type
@pytest.mark.parametrize("name,spec,message", [
    ("kb_depth", {"type": "uniform", "low": 1, "high": 3},
     r"kb_depth is a whole-number setting \(int\).*uniform.*fractions.*`type: int` \(low: 1, high: 3\)"),
    ("mini_tasks", {"type": "loguniform", "low": 2, "high": 4}, r"mini_tasks is a whole-number.*`type: logint`"),
    ("inner_steps", {"type": "uniform", "low": 2, "high": 6}, "inner_steps is a whole-number"),
    ("mask_hidden", {"type": "uniform", "low": 0, "high": 16}, "mask_hidden is a whole-number"),
    ("mask_activation", {"type": "int", "low": 0, "high": 1}, r"mask_activation is a string setting.*`type: choice`"),
    ("mask_init", {"type": "uniform", "low": 0, "high": 1}, "mask_init is a string setting"),
    ("use_masks", {"type": "int", "low": 0, "high": 1}, r"use_masks is a true/false setting.*\[true, false\]"),
    ("class_order", {"type": "choice", "values": [0, 1]}, "class_order is a list setting.*cannot be searched"),
])
def test_a_distribution_that_does_not_suit_the_settings_type_is_refused(tmp_path, name, spec, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path, search_entries={"lr_meta": {"type": "loguniform", "low": 1e-3,
                                                                     "high": 0.1}, name: spec}))


def test_uniform_for_an_integer_setting_is_refused_by_the_search_before_ray(tmp_path, capsys, monkeypatch):
    # before issue 19 the search started, every trial errored 3 times, and it exited 0
    path = write_space(tmp_path, search_entries={"kb_depth": {"type": "uniform", "low": 1, "high": 3}})
    code, err = run_search(["--space", str(path)], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert "kb_depth is a whole-number setting (int)" in err and "type: int" in err and str(path) in err


@pytest.mark.parametrize("name,values,message", [
    ("kb_width", [8, "wide"], r"kb_width is a whole-number setting \(int\); choice value 'wide' \(str\) is not a number"),
    ("kb_width", [8, 12.5], "choice value 12.5 .* is not a whole number"),
    ("kb_width", [8, None], "choice value None .* is empty, which kb_width may not be"),
    ("mask_activation", ["relu", 1], r"mask_activation is a string setting.*choice value 1 \(int\).*quote it"),
    ("mask_activation", ["relu", True], "YAML reads a bare yes, no, on, off, true or false as true/false: quote it"),
    ("use_masks", [True, 0], r"use_masks is a true/false setting.*choice value 0 \(int\) is not true or false"),
    ("lr_meta", [0.01, "fast"], r"lr_meta is a number setting \(float\).*'fast'"),
    ("lr_meta", [0.01, [0.1]], "is not a single value"),
    ("kb_width", [8, 16, 8], "choice value 8 appears twice"),
])
def test_a_choice_value_of_the_wrong_type_is_refused(tmp_path, name, values, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path, search_entries={name: {"type": "choice", "values": values}}))


def test_choice_values_of_the_settings_type_are_kept(tmp_path):
    space = load_space(write_space(tmp_path, search_entries={
        "kb_width": {"type": "choice", "values": [8, 16.0]},  # a whole float is the int
        "lr_mask": {"type": "choice", "values": [None, 0.01, 1]},  # lr_mask may be empty (lr_task)
        "use_masks": {"type": "choice", "values": [True, False]},
        "kb_grad_clip": {"type": "int", "low": 1, "high": 3},  # an int range for a float setting
    }))
    assert space.params["kb_width"].values == (8, 16) and type(space.params["kb_width"].values[1]) is int
    assert space.params["lr_mask"].values == (None, 0.01, 1)


# ---------------------------------------------------------------- every value, not only the ends
def test_every_integer_of_a_range_is_checked_not_only_its_ends():
    # 10 classes cut into 2 or 5 tasks; 3 and 4 tasks do not divide them (the ends alone passed).
    # (A space may not search num_tasks at all; the checker is shown on it here, where a middle
    # value of a range is refused and its ends are not.)
    from marktune.tune.space_checks import check_values
    from marktune.tune.spaces import Param

    base = load_space("digits").base_config()
    with pytest.raises(SpaceError, match=r"num_tasks: int \[2, 5\]: value 3 is refused: num_tasks=3.*"
                                         r"refused: 3, 4; accepted: 2, 5"):
        check_values("space.yaml", base, [Param("num_tasks", "int", low=2, high=5)])


def test_a_searched_number_of_tasks_stops_the_search_before_ray(tmp_path, capsys, monkeypatch):
    path = write_space(tmp_path, search_entries={"num_tasks": {"type": "logint", "low": 2, "high": 5}})
    code, err = run_search(["--space", str(path)], capsys, monkeypatch, tmp_path)
    assert code == 2 and "num_tasks cannot be searched" in err


def test_the_kb_depth_is_checked_against_the_image_size_at_every_value(tmp_path):
    with pytest.raises(SpaceError, match=r"kb_depth: choice \[1, 5\]: value 5 is refused: kb_depth=5.*1\.\.4"):
        load_space(write_space(tmp_path, search_entries={"kb_depth": {"type": "choice", "values": [1, 5]}}))
    with pytest.raises(SpaceError, match=r"kb_depth: int \[2, 6\]: value 5 is refused.*accepted: 2, 3, 4"):
        load_space(write_space(tmp_path, search_entries={"kb_depth": {"type": "int", "low": 2, "high": 6}}))


def test_two_searched_settings_refused_together_are_caught(tmp_path):
    # alone each is fine (fixed kb_depth 1 at 8 px; depth 4 at the default 32 px); together not
    path = tmp_path / "synthetic.yaml"
    path.write_text(textwrap.dedent("""\
        benchmark: synthetic
        fixed: {kb_depth: 1}
        search:
          synthetic_image_size: {type: choice, values: [8, 32]}
          kb_depth: {type: int, low: 1, high: 4}
        """))
    with pytest.raises(SpaceError, match=r"synthetic_image_size=8 together with kb_depth=3 is refused: "
                                         r"kb_depth=3: at 8 px.*each alone is accepted"):
        load_space(path)


def test_a_float_range_is_checked_at_both_ends(tmp_path):
    with pytest.raises(SpaceError, match=r"momentum: uniform \[0.5, 1\]: value 1.0 is refused: momentum must be in"):
        load_space(write_space(tmp_path, search_entries={"momentum": {"type": "uniform", "low": 0.5, "high": 1}}))


def test_a_set_of_a_searched_setting_is_refused(tmp_path, capsys, monkeypatch):
    # the search overwrote it in every trial: the --set was silently ignored
    code, err = run_search(["--space", "digits", "--set", "kb_depth=2"], capsys, monkeypatch, tmp_path)
    assert code == 2
    assert "--set kb_depth=2: kb_depth is searched by" in err and "move kb_depth from search: to fixed:" in err


@pytest.mark.parametrize("spec,message", [
    ({"type": "int", "low": 1, "high": 3, "step": 2}, "int takes only type, low, high, not step; for a stepped range"),
    ({"type": "choice", "values": [1, 2], "low": 1}, "choice takes only type, values, not low"),
])
def test_a_distribution_key_that_would_be_ignored_is_refused(tmp_path, spec, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path, search_entries={"kb_depth": spec}))


# ---------------------------------------------------------------- duplicate keys
DOUBLE_FIXED = """\
benchmark: digits
fixed:
  kb_grad_clip: 1.0
  mask_init: identity
search:
  lr_meta: {type: loguniform, low: 1.0e-3, high: 1.0e-1}
fixed:
  epochs: 1
"""


def test_a_second_fixed_block_is_refused_with_its_line(tmp_path, capsys, monkeypatch):
    # before issue 19 the second block silently replaced the first (kb_grad_clip, mask_init lost)
    path = tmp_path / "double.yaml"
    path.write_text(DOUBLE_FIXED)
    with pytest.raises(SpaceError, match=r"double.yaml, line 7: key 'fixed' appears twice \(first at line 2\)"):
        load_space(path)
    code, err = run_search(["--space", str(path)], capsys, monkeypatch, tmp_path)
    assert code == 2 and "line 7: key 'fixed' appears twice" in err


@pytest.mark.parametrize("text,message", [
    ("benchmark: digits\nfixed:\n  epochs: 1\n  epochs: 2\n", r"line 4: key 'fixed.epochs' appears twice \(first at line 3\)"),
    ("benchmark: digits\nsearch:\n  kb_depth: {type: int, low: 1, high: 2, low: 2}\n",
     r"line 3: key 'search.kb_depth.low' appears twice"),
    ("benchmark: digits\nsearch:\n  kb_depth: {type: int, low: 1, high: 2}\n  kb_depth: {type: int, low: 1, high: 3}\n",
     r"line 4: key 'search.kb_depth' appears twice \(first at line 3\)"),
    ("benchmark: digits\ndefaults:\n  samples: 2\n  samples: 3\n", "line 4: key 'defaults.samples'"),
    ("benchmark: digits\nbenchmark: fmnist\n", "line 2: key 'benchmark'"),
])
def test_duplicate_keys_are_refused_at_every_level(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message):
        load_space(path)


def test_yaml_merge_keys_may_still_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("benchmark: digits\nfixed:\n  <<: {epochs: 1, kb_epochs: 1}\n  epochs: 2\n"
                    "search:\n  lr_meta: {type: loguniform, low: 1.0e-3, high: 1.0e-1}\n")
    assert load_space(path).fixed == {"epochs": 2, "kb_epochs": 1}


def test_run_config_refuses_duplicate_keys_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("benchmark: digits\nepochs: 1\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"run.yaml, line 3: key 'epochs' appears twice \(first at line 2\)"):
        MarkConfig.from_sources(path=path)


def test_the_yaml_loader_is_a_safe_loader():
    from marktune.mark.yaml_io import UniqueKeyLoader, load_yaml_text

    assert issubclass(UniqueKeyLoader, yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError):  # no Python objects from a file
        load_yaml_text("x: !!python/object/apply:os.system ['true']\n")


# ---------------------------------------------------------------- the shipped files
@pytest.mark.parametrize("name", ["cifar100", "miniimagenet", "fmnist", "digits"])
def test_shipped_spaces_pass_and_run_as_configs(name):
    space = load_space(name)
    assert name in available_spaces() and space.params
    cfg = MarkConfig.from_sources(path=space.path)  # `marktune.run --config search_spaces/NAME.yaml`
    assert cfg.benchmark == name


# ---------------------------------------------------------------- the space's own structure and defaults
@pytest.mark.parametrize("changes,message", [
    ({"defaults": {"cpus_per_trial": True}}, r"defaults.cpus_per_trial must be a number >= 0 \(got True\)"),
    ({"defaults": {"cpus_per_trial": float("nan")}}, "defaults.cpus_per_trial must be a number >= 0"),
    ({"defaults": {"cpus_per_trial": "two"}}, "defaults.cpus_per_trial must be a number"),
    ({"defaults": {"cpus_per_trial": None}}, r"leave it out for the default \(1.0\)"),  # float(None) in the plan
    ({"defaults": {"gpus_per_trial": 1.5}}, "defaults.gpus_per_trial must be a fraction"),
    ({"defaults": {"gpus_per_trial": "all"}}, "defaults.gpus_per_trial must be a number"),
    ({"defaults": {"samples": 2.5}}, r"defaults.samples must be a whole number >= 1 \(got 2.5\)"),
    ({"defaults": {"max_concurrent": True}}, "defaults.max_concurrent must be a whole number"),
    ({"defaults": {"grace_period": 0}}, "defaults.grace_period must be a whole number >= 1"),
])
def test_bad_search_defaults_are_refused_naming_the_key(tmp_path, changes, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path, **changes))


@pytest.mark.parametrize("text,message", [
    ("benchmark: digits\nfixed: [epochs, 1]\n", "fixed must be a mapping of key: value lines"),
    ("benchmark: digits\nsearch: [kb_depth]\n", "search must be a mapping"),
    ("benchmark: digits\ndefaults: 5\n", "defaults must be a mapping"),
    ("benchmark: [digits]\n", "benchmark must be a name"),
])
def test_a_block_of_the_wrong_shape_is_refused(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=message):
        load_space(path)


# ---------------------------------------------------------------- the checks themselves
def test_setting_types_come_from_mark_config():
    from marktune.tune.space_checks import setting_type

    assert setting_type("kb_depth") == ("int", False)
    assert setting_type("num_tasks") == ("int", True)
    assert setting_type("kb_grad_clip") == ("float", True)
    assert setting_type("use_masks") == ("bool", False)
    assert setting_type("class_order") == ("list", True)


def test_range_values_every_integer_or_a_wide_ranges_spread():
    from marktune.tune.space_checks import range_values

    assert range_values("int", 2.0, 5.0) == [2, 3, 4, 5]
    assert range_values("logint", 1.0, 3.0) == [1, 2, 3]
    assert range_values("uniform", 0.1, 0.5) == [0.1, 0.5]
    wide = range_values("int", 0.0, 1e9, limit=100)
    assert wide[0] == 0 and wide[-1] == 10 ** 9 and len(wide) == 100


def test_check_values_and_combinations_directly():
    from marktune.tune.space_checks import check_combinations, check_values
    from marktune.tune.spaces import Param

    base = {"benchmark": "synthetic", "kb_depth": 1}
    size, depth = Param("synthetic_image_size", "choice", values=(8, 32)), Param("kb_depth", "int", low=1, high=4)
    check_values("f", base, [size, depth])  # each alone
    with pytest.raises(SpaceError, match="synthetic_image_size=8 together with kb_depth=3"):
        check_combinations("f", base, [size, depth])
    check_combinations("f", base, [Param("synthetic_image_size", "choice", values=(32, 64)), depth])


def test_the_benchmark_cannot_be_searched(tmp_path):
    with pytest.raises(SpaceError, match="benchmark cannot be searched"):
        load_space(write_space(tmp_path, search_entries={"benchmark": {"type": "choice", "values": ["digits", "fmnist"]}}))


def test_a_seed_beyond_numpys_range_is_refused(tmp_path, capsys, monkeypatch):
    # every trial failed in numpy's RandomState (retried 3 times), and the search exited 0
    with pytest.raises(SpaceError, match=r"searched seed: int \[0, 1e\+13\]: value \d+ is refused: "
                                         r"seed must be in 0..4294967295.*of 5000 values checked"):
        load_space(write_space(tmp_path, search_entries={"seed": {"type": "int", "low": 0, "high": 10 ** 13}}))
    code, err = run_search(["--space", "digits", "--set", "data_seed=4294967296"], capsys, monkeypatch, tmp_path)
    assert code == 2 and "data_seed must be in 0..4294967295" in err
    load_space(write_space(tmp_path, search_entries={"seed": {"type": "int", "low": 0, "high": 2 ** 32 - 1}}))


@pytest.mark.parametrize("text,message", [
    # a search with nothing searched failed in Optuna after Ray had started (a raw RuntimeError)
    ("benchmark: digits\nfixed: {epochs: 1}\nsearch: {}\n", "search: names no setting"),
    ("benchmark: digits\nfixed: {epochs: 1}\n", "search: names no setting"),
    ("benchmark: digits\n\xff\xfe bad\n", "as a UTF-8 text file"),
])
def test_an_empty_search_or_unreadable_file_is_refused(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(SpaceError, match=message):
        load_space(path)
    if "UTF-8" in message:
        with pytest.raises(ConfigError, match=message):
            MarkConfig.from_sources(path=path)


def test_the_new_modules_examples_hold():
    import doctest

    from marktune.mark import yaml_io
    from marktune.tune import space_checks

    for module in (yaml_io, space_checks):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_a_grace_period_beyond_the_tuning_tasks_is_refused(tmp_path, capsys, monkeypatch):
    # Ray's ASHA asserted `grace_period must be <= max_t!` after Ray had started
    path = write_space(tmp_path, defaults={"grace_period": 3})
    code, err = run_search(["--space", str(path), "--protocol", "first-k", "--tuning-tasks", "2"],
                           capsys, monkeypatch, tmp_path)
    assert code == 2
    assert "defaults.grace_period (3) exceeds the 2 tasks a trial runs (--tuning-tasks)" in err
