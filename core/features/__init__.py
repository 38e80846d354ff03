"""The feature store: entities, feature views and their features; the offline store
(point-in-time training sets from Parquet/CSV/SQL/pushed sources through DuckDB);
materialisation into an online store plugin (group ``mlrig.online_stores``); online reads
for serving. :class:`mlrig.features.service.FeatureService` is the entry point
(``platform.features``); :mod:`mlrig.features.spec` holds the plain definitions every part
works on."""
