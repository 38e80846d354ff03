"""The MLflow tracking REST protocol over mlrig's runs: error bodies (:mod:`.errors`),
the mapping of runs, groups and metrics to MLflow's JSON (:mod:`.convert`) and
``search-runs`` / ``search-experiments`` filters (:mod:`.search`). The routes are
:mod:`mlrig.api.routers.mlflow_compat`."""
