"""The replay bench's library: searches replayed offline on recorded curves (``bench/replay.py``,
docs/replay.md), above the live search (``marktune.tune``), whose searcher and scheduler it drives.

* :mod:`marktune.replay.table`: a curves table checked and grouped by configuration;
* :mod:`marktune.replay.surrogates`: what stands for settings the table lacks, and how well each
  candidate predicts (cross-validated, beside the seed noise);
* :mod:`marktune.replay.search`: one replayed search on simulated workers, strategies, intervals.
"""
