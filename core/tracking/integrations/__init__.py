"""Framework integrations of tracking, each importing its framework only when used:

* :mod:`~mlrig.tracking.integrations.sklearn`: what :func:`mlrig.autolog` patches;
* :mod:`~mlrig.tracking.integrations.keras`: ``MlrigCallback`` for ``model.fit``;
* :mod:`~mlrig.tracking.integrations.lightning`: ``MlrigLogger`` for a Lightning ``Trainer``.
"""
