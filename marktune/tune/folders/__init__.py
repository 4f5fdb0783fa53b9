"""Every rule for the folders marktune writes, in one place: nothing a command writes replaces
another run's record.

=================  ==============================  ============================================
command            its folder                      the rule (and who checks it)
=================  ==============================  ============================================
``run``            ``--out DIR``                   a folder holding a run's record is refused
                                                   before data loads; ``--resume DIR`` continues
                                                   it, ``--overwrite`` moves it aside
                                                   (:mod:`.output`)
``search``         ``<storage>/<name>``            one search or evaluation at a time
                                                   (:mod:`.lock`); a new search never reuses a
                                                   name, ``--resume`` takes only a folder its
                                                   settings file identifies, and puts Tune's
                                                   state back whole (:mod:`.experiment`,
                                                   :mod:`.search_settings`,
                                                   :mod:`.state_keeper`)
``evaluate``       ``<experiment>/evaluations/     a folder holding another evaluation's runs is
                   <name>``                        refused, ``--overwrite`` moves it aside
                                                   (:mod:`.output`); it takes the experiment's
                                                   lock and its own folder's (:mod:`.lock`)
``report``         ``--out FILE``, ``figures/``    an existing file that is not a marktune
                                                   report, or a folder holding another run's or
                                                   experiment's record, is refused
                                                   (:mod:`.output`); its own report and figures
                                                   are rewritten
=================  ==============================  ============================================

Above them all, ownership (:mod:`.ownership`): each command marks its folder as its own first
(``.marktune_owner``) and never writes into, moves or renames a folder another kind of command
owns, nor one nested inside it, ``--overwrite`` or not; ``--overwrite`` moves aside only a folder of
its own kind and says where. Moved aside means renamed to ``<name>.replaced-<time>``, never deleted. Every refusal comes
before any expensive work, and names the folder and the ways on.
"""
