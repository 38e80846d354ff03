"""Property-style walk: every route of the OpenAPI schema, every query and path parameter
and every top-level body field gets each nasty value (NUL, lone surrogates, integers past
64 bits, negative numbers, naive and out-of-range datetimes, deep nesting, oversized
text). The server never answers 5xx, and after every accepted (2xx) write the object and
every list still read back (2xx). On SQLite and PostgreSQL.

Bodies are raw JSON text, so lone surrogates travel as ``\\ud800`` escapes.
"""

import json
import re

import pytest
from _api import list_routes
from fastapi.testclient import TestClient

from mlrig.api import create_app
from mlrig.security import Principal

ADMIN = Principal(name="local", role="admin")

#: values for query and path parameters, already URL-encoded
PARAM_VALUES = [
    "%00",
    "a%00b",
    "%ED%A0%80",  # the UTF-8 bytes of a surrogate: invalid UTF-8
    "9" * 30,
    "-1",
    "-" + "9" * 30,
    "2026-01-01",
    "0001-01-01T00:00:00%2B05:00",
    "9999-12-31T23:59:59-05:00",
    "x" * 5000,
]
#: values for body fields, as JSON text
BODY_VALUES = [
    r'"a\u0000b"',
    r'"\ud800"',
    r'"x\udfffy"',
    "1" + "0" * 30,
    "-1",
    "1e308",
    '"2026-01-01T00:00:00"',
    '"0001-01-01T00:00:00+05:00"',
    '{"a": ' * 40 + "1" + "}" * 40,
    "[" + ",".join(['"x"'] * 2000) + "]",
    r'{"\u0000": 1}',
    r'{"k": "\ud800"}',
    '"' + "x" * 20_000 + '"',
]
#: a valid body per operation, so each nasty field is tested alone
VALID_BODIES = {
    ("post", "/api/ml/models"): {"name": "fresh"},
    ("put", "/api/ml/models/{id}"): {"description": "d"},
    ("put", "/api/ml/models/{id}/versions/{version}"): {"description": "d"},
    ("put", "/api/ml/models/{id}/aliases/{alias}"): {"version": "1"},
    ("post", "/api/ml/models/{id}/versions/{version}/stage"): {"stage": "staging"},
    ("post", "/api/ml/models/{id}/versions/{version}/evaluations"): {
        "dataset_uri": "missing.csv",
        "target": "y",
    },
    ("post", "/api/ml/approvals/{id}/approve"): {"comment": "ok"},
    ("post", "/api/ml/approvals/{id}/reject"): {"comment": "no"},
    ("post", "/api/ml/users"): {"name": "fresh"},
    ("post", "/api/ml/tokens"): {"name": "fresh"},
    ("post", "/api/ml/experiments"): {"name": "fresh", "trainer": "sklearn"},
    ("post", "/api/ml/experiments/{id}/metrics"): {"points": [{"name": "m", "value": 1}]},
}
#: path parameters: a real object first, then nasty values
REAL = {"id": "walk", "version": "1", "alias": "champion", "path": "model.bin"}
PLACEHOLDER = "__NASTY__"


def _operations(schema):
    for path, item in schema["paths"].items():
        if not path.startswith("/api/ml"):
            continue
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield method, path, operation


def _fill(template, values):
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: values.get(m.group(1), "x"), template)


def _body_fields(schema, operation):
    """The top-level fields of a JSON body (resolved through $ref)."""
    content = operation.get("requestBody", {}).get("content", {})
    body = content.get("application/json", {}).get("schema", {})
    refs = [body.get("$ref")] + [s.get("$ref") for s in body.get("anyOf", [])]
    for ref in filter(None, refs):
        component = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return list(component.get("properties", {}))
    return list(body.get("properties", {}))


class Walk:
    def __init__(self, api, schema):
        self.api = api
        self.schema = schema
        self.failures = []
        self.accepted = 0
        self.requests = 0

    def send(self, method, url, **kwargs):
        response = self.api.request(method.upper(), url, **kwargs)
        self.requests += 1
        status = response.status_code
        label = f"{method.upper()} {url[:120]} {str(kwargs.get('content', ''))[:120]}"
        if status >= 500 and not (url.endswith("/health") and status == 503):
            self.failures.append(f"{label} -> {status} {response.text[:200]}")
        elif status >= 400:
            error = response.json().get("error", {})
            if set(error) != {"code", "message", "details"}:
                self.failures.append(f"{label}: not the error shape: {response.text[:200]}")
        elif method != "get":
            self.accepted += 1
            self.read_back(label, response)
        return response

    def read_back(self, label, response):
        """An accepted write: the object it names and every list read back."""
        urls = list_routes(self.api.app)
        try:
            created = response.json()
        except ValueError:
            created = None
        if isinstance(created, dict) and created.get("name") and "trainer" in created:
            urls.append(f"/api/ml/experiments/{created['id']}")
        elif isinstance(created, dict) and created.get("name") and "version_count" in created:
            urls.append(f"/api/ml/models/{created['id']}")
        for url in urls:
            after = self.api.get(url)
            if after.status_code != 200:
                self.failures.append(f"after {label}: GET {url} -> {after.status_code}")


@pytest.fixture
def walk(db_platform, trainer):
    db_platform.security.create_user(name="root", role="admin")
    token = db_platform.security.create_token(user="root")["token"]
    db_platform.registry.create_version(
        "walk", files={"model.bin": b"weights"}, actor=ADMIN, create_model=True
    )
    db_platform.lifecycle.set_alias("walk", "champion", "1", actor=ADMIN)
    db_platform.experiments.create(name="walk", trainer=trainer, actor=ADMIN)
    app = create_app(db_platform)
    with TestClient(
        app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {token}"}
    ) as api:
        yield Walk(api, app.openapi())


def test_nasty_values_never_give_5xx_and_accepted_ones_read_back(walk):
    operations = list(_operations(walk.schema))
    assert len(operations) >= 30  # the walk really covers the API
    # deletes last: they would remove the objects the other operations need
    operations.sort(key=lambda op: op[0] == "delete")
    for method, path, operation in operations:
        names = re.findall(r"{(\w+)(?::\w+)?}", path)
        real_url = _fill(path, REAL)
        base = VALID_BODIES.get((method, path))
        body = {"content": json.dumps(base), "headers": {"Content-Type": "application/json"}}
        kwargs = body if base is not None else {}
        for name in names:  # each path parameter alone
            for value in PARAM_VALUES:
                walk.send(method, _fill(path, {**REAL, name: value}), **kwargs)
        for parameter in operation.get("parameters", []):
            if parameter["in"] != "query" or parameter["name"] == "follow":
                continue
            for value in PARAM_VALUES:
                walk.send(method, f"{real_url}?{parameter['name']}={value}", **kwargs)
        if base is None:
            continue
        fields = _body_fields(walk.schema, operation) or list(base)
        if (method, path) == ("post", "/api/ml/experiments/{id}/metrics"):
            fields = []  # its fields are the points': below
        for field in fields:
            for value in BODY_VALUES:
                text = json.dumps({**base, field: PLACEHOLDER}).replace(f'"{PLACEHOLDER}"', value)
                walk.send(
                    method, real_url, content=text, headers={"Content-Type": "application/json"}
                )
    for field in ("name", "value", "step", "epoch", "kind", "recorded_at"):
        for value in BODY_VALUES:
            point = json.dumps({"name": "m", "value": 1, field: PLACEHOLDER})
            text = '{"points": [' + point.replace(f'"{PLACEHOLDER}"', value) + "]}"
            walk.send(
                "post",
                "/api/ml/experiments/walk/metrics",
                content=text,
                headers={"Content-Type": "application/json"},
            )
    for field in ("version", "description", "tags", "params", "metrics", "signature", "datasets"):
        for value in BODY_VALUES:
            metadata = json.dumps({field: PLACEHOLDER}).replace(f'"{PLACEHOLDER}"', value)
            walk.send(
                "post",
                "/api/ml/models/walk/versions",
                files={"files": ("model.bin", b"w")},
                data={"metadata": metadata},
            )
    assert walk.failures == []
    assert walk.requests > 1500 and walk.accepted > 0  # it sent them, and some were fine
    for url in list_routes(walk.api.app):
        assert walk.api.get(url).status_code == 200
