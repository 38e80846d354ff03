"""Hyperparameter sweeps: a search strategy's trials run as experiments on the job queue
(:mod:`mlrig.sweeps.service` for the records, :mod:`mlrig.sweeps.driver` for the loop that
asks, tells and saves the strategy, :mod:`mlrig.sweeps.results` for best-so-far and
parameter importances)."""
