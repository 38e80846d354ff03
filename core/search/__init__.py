"""Hyperparameter search: spaces (:mod:`mlrig.search.space`), pruning rules
(:mod:`mlrig.search.pruning`). Strategies are plugins (group ``mlrig.search``); sweeps,
which run trials on the job queue, live in :mod:`mlrig.sweeps`."""
