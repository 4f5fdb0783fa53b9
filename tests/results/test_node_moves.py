"""A trial's rows that change node: the summary's sentence about a lost node."""
from __future__ import annotations

import doctest
import json

from marktune.results import node_moves
from marktune.results.node_moves import experiment_moves, node_loss_note, trial_moves


def rows(*spec):
    """(task, node, resumed_at) triples as result rows."""
    return [{"tasks_done": t, "node_ip": n, "resumed_at_task": r} for t, n, r in spec]


def test_doctest():
    assert doctest.testmod(node_moves).failed == 0


def test_a_trial_on_one_node_did_not_move():
    assert trial_moves("t", rows((1, "a", 0), (2, "a", 0)), failed=False) == []
    assert node_loss_note([]) == ""


def test_two_trials_lost_with_their_node_in_words():
    moves = (trial_moves("trial_a", rows((1, "w2", 0), (2, "w2", 0), (3, "w1", 2)), failed=True)
             + trial_moves("trial_b", rows((1, "w2", 0), (2, "w1", 1)), failed=True))
    note = node_loss_note(moves)
    assert note == ("node w2 was lost while trial_a, trial_b were running on it: they continued on w1 from "
                    "their last finished task (trial_a after task 2, trial_b after task 1); no finished task ran twice")


def test_a_task_run_again_is_named():
    moves = trial_moves("trial_a", rows((1, "w2", 0), (2, "w2", 0), (2, "w1", 1)), failed=True)
    assert moves[0].tasks_again == 1
    assert node_loss_note(moves).endswith("finished tasks ran again: trial_a tasks 2-2")


def test_a_resumed_search_is_not_called_a_lost_node(tmp_path):
    for name, failed in (("trial_a", True), ("trial_b", False)):
        d = tmp_path / name
        d.mkdir()
        spec = rows((1, "w2", 0), (2, "w1", 1)) if name == "trial_a" else rows((1, "w3", 0), (2, "w1", 1))
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in spec))
        if failed:
            (d / "error.txt").write_text("ActorDiedError: its node died")
    note = node_loss_note(experiment_moves(tmp_path))
    assert note.startswith("node w2 was lost while trial_a ran on it: it continued on w1 ")
    assert "trial_b moved from node w3 when the search was resumed" in note
