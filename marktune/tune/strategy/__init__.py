"""Which trials run and which stop: a search's strategy.

``strategies`` is the one place a strategy is named: the registries of samplers and schedulers
and ``SearchStrategy``, a search's typed choice of them (the flags, else the space's defaults).
The rest are what the registries build: ``samplers`` (Optuna's samplers), ``searcher`` (Optuna
behind Ray Tune, its study kept where ``--resume`` finds it), ``scheduler`` (ASHA that survives
a resume), ``mo_asha`` (ASHA over several objectives) and ``hyperband``. Adding a sampler or a
scheduler is one file here and one registry entry (docs/architecture.md).
"""
