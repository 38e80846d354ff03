"""``mlrig init``: write a commented starter ``mlrig.toml``."""

from __future__ import annotations

from pathlib import Path

import click

STARTER = """\
# mlrig configuration. Every key can be overridden from the environment as
# MLRIG_<SECTION>__<KEY>, e.g. MLRIG_DATABASE__URL or MLRIG_STORAGE__BACKEND.
# Relative paths are resolved against the folder of this file.
# Reference: docs/configuration.md

[database]
# SQLite is embedded and needs nothing; for a team, use PostgreSQL:
#   url = "postgresql://user:password@db.example.com:5432/mlrig"
url = "sqlite:///.mlrig/mlrig.db"

[storage]
# Which storage backend holds artifacts: "local" or "s3" (`mlrig plugins list --kind storage`).
backend = "local"
# Compress artifacts at rest: "none" or "zstd".
compression = "none"
# Encrypt artifacts at rest with AES-256-GCM (a fresh data key per artifact, wrapped by
# the master key). Keep the key out of this file: set MLRIG_STORAGE__MASTER_KEY.
# To rotate it, list the old key in MLRIG_STORAGE__PREVIOUS_MASTER_KEYS='["..."]' and
# run `mlrig storage rotate-key`.
encryption = false

[storage.local]
root = ".mlrig/artifacts"

# [storage.s3]
# bucket = "my-models"
# prefix = "mlrig"
# endpoint_url = "http://127.0.0.1:9000"   # MinIO, moto...; omit for AWS
# region = "eu-west-1"
# credentials come from the usual AWS chain (env, ~/.aws, instance role)

[executor]
# Runs training jobs: "local" runs them as subprocesses of `mlrig worker`.
backend = "local"

[server]
host = "127.0.0.1"
port = 8080
workers = 1

[auth]
# The server requires a token unless this is false AND it binds to loopback only.
enabled = true

# [datasets]
# Folders whose files evaluations, training sets and feature views may read (nothing
# outside them is read; relative paths start at this file's folder).
# allowed_roots = ["data"]

# [features]
# The online feature store: "sql" (this database) or "redis" (`pip install 'mlrig[redis]'`).
# backend = "sql"
# [features.redis]
# url = "redis://127.0.0.1:6379/0"

# [api]
# Request body limits; a bigger body is refused with 413 before it is read.
# max_body_bytes = "1MiB"            # JSON routes
# max_metrics_body_bytes = "16MiB"   # POST /api/ml/experiments/{id}/metrics
# max_upload_bytes = "5GiB"          # artifact uploads

# [plugins.NAME]
# A hook plugin's own options (its docs, or `mlrig plugins show hooks NAME`, list them);
# relative paths start at this file's folder. Environment: MLRIG_PLUGINS__NAME__KEY.
"""


@click.command()
@click.option(
    "--path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("mlrig.toml"),
    show_default=True,
    help="Where to write the file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter mlrig.toml (SQLite and artifacts under ./.mlrig)."""
    if path.exists() and not force:
        msg = f"{path} already exists; use --force to overwrite it"
        raise click.ClickException(msg)
    path.write_text(STARTER, encoding="utf-8")
    click.echo(f"wrote {path}; check it with: mlrig config show")
