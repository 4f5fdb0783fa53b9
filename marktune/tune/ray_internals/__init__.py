"""The one package that reads or writes private attributes of Ray and Optuna.

marktune changes two of Ray Tune's classes in ways their public API does not offer:

* ``ResumableASHA`` (``marktune.tune.strategy.scheduler``) refills the rungs of Ray's
  ``AsyncHyperBandScheduler`` on ``--resume`` (ray-project/ray#30838): it needs the bracket a
  trial was given (``_trial_info``), the brackets and their rungs (``_brackets``,
  ``_Bracket._rungs``), the time attribute, the metric and its sign (``_time_attr``,
  ``_metric``, ``_metric_op``).
* ``MarkOptunaSearch`` (``marktune.tune.strategy.searcher``) tells Optuna PRUNED for trials ASHA stopped
  and pickles the study's address instead of the study: it needs Ray's ``OptunaSearch``'s study,
  storage, Optuna trials and completed trials (``_ot_study``, ``_storage``, ``_ot_trials``,
  ``_completed_trials``), the study's name, space, mode and sampler (``_study_name``,
  ``_space``, ``_mode``, ``_sampler``) and its ``_setup_study``.
* ``snapshot_share`` keeps Tune's experiment-state snapshots to a share of the driver's time
  (``_ExperimentCheckpointManager._update_auto_checkpoint_time``, ``_checkpoint_period``).
* ``retry_transient_errors_only`` wraps Tune's ``Trial.handle_error`` and sets a trial's
  ``max_failures`` so that Tune does not retry a trial whose error is permanent (a config error),
  and wraps ``TuneController._process_trial_failure`` so that the second report of one dead
  actor does not end a trial that Tune already queued to retry (:func:`_stale_actor_failure`),
  and ``TuneController._schedule_trial_restore`` so that a trial restarts from the checkpoint of
  its last reported task (:func:`adopt_reported_checkpoint`). :func:`handle_failures` installs
  all three.
* ``autoscaler_node_types`` reads the autoscaler's cluster config from ``ray._private.state``.
* The pre-flight token check reads the gRPC metadata Ray's own clients send
  (:func:`ray_token_metadata`, from ``ray._private``).

Every such access goes through a function here, so a Ray or Optuna upgrade that renames one breaks
here, and :func:`check_library_internals` (run by ``tests/tune/test_ray_internals.py``) says which:
"Ray changed X; see marktune/tune/ray_internals/". One module per Ray class changed: ``asha``,
``optuna_search``, ``controller`` (Tune's loop: retries, restores, experiment checkpoints),
``cluster``; ``check`` is the check; ``wrapping`` puts a wrapper on a Ray method. Written against
Ray 2.60.0 and Optuna 5.0.0 (pyproject.toml pins them).
"""
from __future__ import annotations

from marktune.tune.ray_internals.asha import (asha_bracket, asha_metric, asha_metric_sign, asha_rungs, asha_time_attr,
                                              bracket_record)
from marktune.tune.ray_internals.check import check_library_internals, library_internals_problems
from marktune.tune.ray_internals.cluster import autoscaler_node_types, ray_token_metadata
from marktune.tune.ray_internals.controller import (adopt_reported_checkpoint, handle_failures,
                                                    retry_transient_errors_only, snapshot_share)
from marktune.tune.ray_internals.optuna_search import (restore_searcher, searcher_completed, searcher_state,
                                                       searcher_study, searcher_trials)
from marktune.tune.ray_internals.wrapping import HERE, LibraryChanged

__all__ = ["HERE", "LibraryChanged", "adopt_reported_checkpoint", "asha_bracket", "asha_metric", "asha_metric_sign",
           "asha_rungs", "asha_time_attr", "autoscaler_node_types", "bracket_record", "check_library_internals",
           "handle_failures", "library_internals_problems", "ray_token_metadata", "restore_searcher",
           "retry_transient_errors_only", "searcher_completed", "searcher_state", "searcher_study", "searcher_trials",
           "snapshot_share"]
