"""Tracking runs from user code: ``mlrig.start_run``, ``mlrig.log_metric``... (see
docs/tracking.md).

* :mod:`mlrig.tracking.fluent`: the module-level API (the active-run stack);
* :mod:`mlrig.tracking.run`: :class:`~mlrig.tracking.run.Run`;
* :mod:`mlrig.tracking.buffer`: the metric buffer (background sending, spill, retries);
* :mod:`mlrig.tracking.stores`: embedded (the local platform) or remote (a server);
* :mod:`mlrig.tracking.reproducibility`: git, Python, packages, command line, seed;
* :mod:`mlrig.tracking.signals`: SIGTERM, uncaught exceptions and exit.

Nothing is imported here: ``import mlrig`` stays light.
"""
