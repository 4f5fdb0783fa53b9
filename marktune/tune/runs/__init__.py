"""A command's run on Ray: its pre-flight, Ray's start, and the Tuner of each kind of run.

``preflight`` checks one input each and ``launch`` runs a command's checks, cheapest first, then
starts Ray; ``search_run`` is the search's Tuner (new, or restored for ``--resume``);
``grid_run`` runs given settings again at given seeds, for ``confirmation_run`` (the search's
confirmation stage) and ``evaluation_run`` (``evaluate``); ``tune_setup`` keeps Tune's
checkpoints and reads its trial states.
"""
