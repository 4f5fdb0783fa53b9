"""After a run, each trial keeps only its newest checkpoint (all are kept while trials run)."""
from marktune.tune.runs.tune_setup import prune_checkpoints


def test_prune_keeps_each_trials_newest_checkpoint_only(tmp_path):
    for trial, count in (("trial_a", 3), ("trial_b", 1), ("trial_c", 0)):
        for i in range(count):
            (tmp_path / trial / f"checkpoint_{i:06d}").mkdir(parents=True)
            (tmp_path / trial / f"checkpoint_{i:06d}" / "learner.pt").write_bytes(b"x")
        (tmp_path / trial).mkdir(exist_ok=True)
        (tmp_path / trial / "result.json").write_text("{}")
    (tmp_path / "not_a_trial" / "checkpoint_000000").mkdir(parents=True)

    assert prune_checkpoints(str(tmp_path)) == 2
    assert sorted(p.name for p in (tmp_path / "trial_a").iterdir()) == ["checkpoint_000002", "result.json"]
    assert (tmp_path / "trial_a" / "checkpoint_000002" / "learner.pt").read_bytes() == b"x"
    assert sorted(p.name for p in (tmp_path / "trial_b").iterdir()) == ["checkpoint_000000", "result.json"]
    assert (tmp_path / "not_a_trial" / "checkpoint_000000").is_dir()  # only trial_* directories
    assert prune_checkpoints(str(tmp_path)) == 0
    assert prune_checkpoints(str(tmp_path / "missing")) == 0
