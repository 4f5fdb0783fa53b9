"""What a search shows while it runs: ``progress`` (a status line per finished task, counts and
the best so far, instead of Ray's tables) and ``tensorboard_logger`` (per-task scalars and the
HParams a user compares trials with)."""
