"""What Ray runs inside each trial actor, and nothing of the driver.

* :mod:`runners.mark_sequence`: one trial's whole MARK sequence, task by task
  (``train_mark_sequence``, the function trainable of every search trial and evaluation run),
  the device choice, and which of its errors are permanent;
* :mod:`runners.runtime`: the trial's settings that are not the learner's (``TrialRuntime``).

Layers: data < mark < results < runners < tune < cli. A runner imports ``marktune``'s data, mark
and results layers (and Ray, torch); the driver (``marktune.tune``) refers to the runners, never
the other way round.
"""
