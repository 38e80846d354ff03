"""``mlrig predict DEPLOYMENT --input file.json|-``: send one input file to a deployment.

Without ``--url`` the prediction is made in this process (a data plane that loads just
that deployment, from the config's database and storage); with ``--url`` it is sent to a
running server (``mlrig server`` or ``mlrig serve``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mlrig.cli.context import get_state


@click.command()
@click.argument("deployment")
@click.option(
    "--input",
    "input_path",
    required=True,
    help='A JSON file (or - for stdin): mlrig {"inputs": [[...]]}, MLflow scoring or '
    "KServe v2; a bare list of rows is read as mlrig rows.",
)
@click.option("--url", default=None, help="A running server (http://host:port); else in-process.")
@click.option("--token", default=None, help="API token for --url (default: MLRIG_TOKEN).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer as JSON.")
def predict(
    deployment: str, input_path: str, url: str | None, token: str | None, as_json: bool
) -> None:
    """Predict with DEPLOYMENT (its id or name) for the rows of an input file."""
    body = _read_input(input_path)
    state = get_state()
    server = url or state.url  # this command's --url, else the top-level --url/MLRIG_URL
    if server:
        token = token or state.token
        if not token:
            from mlrig.remote.credentials import token_for

            token = token_for(server)  # stored by `mlrig login`
        answer = _remote(server, deployment, body, token)
    else:
        answer = _local(deployment, body)
    _show(answer, as_json)


def _read_input(path: str) -> bytes:
    import orjson

    from mlrig.errors import ValidationError

    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read the input {path!r}: {exc.strerror or exc}"
        raise ValidationError(msg) from exc
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"the input {path!r} is not JSON: {exc}"
        raise ValidationError(msg) from exc
    if isinstance(doc, list):  # a bare list of rows
        return orjson.dumps({"inputs": doc})
    return raw


def _local(ref: str, body: bytes) -> dict[str, Any]:
    import asyncio

    import orjson

    from mlrig.serving.dataplane import DataPlane

    state = get_state()
    platform = state.platform()
    principal = state.principal()
    dataplane = DataPlane(platform, only={ref}, report_status=False)
    dataplane.start(wait=True)
    try:

        async def run() -> bytes:
            served = await dataplane.resolve(ref, principal)
            answer = await dataplane.predict(served, body, content_type="application/json")
            return answer.body

        return orjson.loads(asyncio.run(run()))
    finally:
        dataplane.stop()


def _remote(url: str, ref: str, body: bytes, token: str | None) -> dict[str, Any]:
    import httpx

    from mlrig.errors import MlrigError

    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    target = f"{url.rstrip('/')}/api/ml/deployments/{ref}/predict"
    try:
        response = httpx.post(target, content=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        msg = f"cannot reach {url}: {exc}"
        raise MlrigError(msg) from exc
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if response.status_code >= 400:
        error = (doc or {}).get("error") if isinstance(doc, dict) else None
        message = error.get("message") if isinstance(error, dict) else response.text[:300]
        failure = MlrigError(f"{response.status_code}: {message}")
        failure.http_status = response.status_code
        raise failure
    return doc if isinstance(doc, dict) else {"predictions": doc}


def _show(answer: dict[str, Any], as_json: bool) -> None:
    from mlrig.cli.output import print_json

    if as_json or "predictions" not in answer:  # a v2 answer: its outputs as they are
        print_json(answer)
        return
    where = " ".join(
        f"{k} {answer[k]}" for k in ("deployment", "model", "version") if answer.get(k)
    )
    if where:
        click.echo(where)
    probabilities = answer.get("probabilities")
    for i, prediction in enumerate(answer["predictions"]):
        line = f"{i}\t{prediction}"
        if probabilities:
            line += "\t" + " ".join(f"{p:.4f}" for p in probabilities[i])
        click.echo(line)
