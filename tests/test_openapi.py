"""The OpenAPI contract: response models, error answers, list envelopes, the request rules
in the schema, offline docs, and the defects the schemathesis run found."""

from __future__ import annotations

import re
from typing import Any

import pytest

from mlrig.api.openapi import NO_NUL

API = "/api/ml"
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def schema(api_client: Any) -> dict[str, Any]:
    response = api_client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        if path.startswith(API)
        for method, operation in item.items()
        if method in METHODS
    ]


def _success(operation: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    code = next(c for c in operation["responses"] if c.startswith("2"))
    return code, operation["responses"][code]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def test_every_route_documents_a_real_success_shape(schema):
    vague = []
    for method, path, operation in _operations(schema):
        _, answer = _success(operation)
        content = answer.get("content", {})
        if not content:
            vague.append(f"{method} {path}: no content")
        for media, body in content.items():
            shape = body.get("schema", {})
            if media == "application/json" and not ({"$ref", "type", "anyOf"} & set(shape)):
                vague.append(f"{method} {path}: {shape}")  # Any: no shape at all
    assert vague == []


def test_non_json_answers_have_their_media_types(schema):
    paths = schema["paths"]
    download = paths[f"{API}/models/{{id}}/versions/{{version}}/artifacts/{{path}}"]["get"]
    assert list(download["responses"]["200"]["content"]) == ["application/octet-stream"]
    logs = paths[f"{API}/experiments/{{id}}/logs"]["get"]["responses"]["200"]
    assert list(logs["content"]) == ["text/plain"]
    assert "X-Next-Offset" in logs["headers"]


def test_every_list_route_answers_the_envelope(schema):
    bare, pages = [], []
    for method, path, operation in _operations(schema):
        _, answer = _success(operation)
        shape = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if shape.get("type") == "array":
            bare.append(f"{method} {path}")
        if shape.get("$ref", "").rsplit("/", 1)[-1].startswith("Page_"):
            page = _resolve(schema, shape)
            assert set(page["required"]) == {"items", "next_cursor"}, path
            pages.append(path)
    assert bare == []
    listed = {f"{API}/{name}" for name in ("models", "users", "tokens", "audit", "approvals")}
    assert listed | {f"{API}/experiments", f"{API}/model-versions"} <= set(pages)


def test_error_answers_are_documented_with_the_one_shape(schema):
    problems = []
    for method, path, operation in _operations(schema):
        codes = set(operation["responses"])
        needed = {"422"} if operation.get("parameters") or "requestBody" in operation else set()
        if operation.get("security"):
            needed |= {"401", "403"}
        if "{" in path:
            needed.add("404")
        if "requestBody" in operation:
            needed |= {"400", "413"}
        if needed - codes:
            problems.append(f"{method} {path}: missing {sorted(needed - codes)}")
        for code, answer in operation["responses"].items():
            if code.startswith("4"):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                if not ref.endswith("/ErrorBody"):
                    problems.append(f"{method} {path} {code}: {ref}")
    assert problems == []
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_the_documented_error_shape_is_what_the_server_sends(api_client, admin_headers, schema):
    body = api_client.get(f"{API}/models", params={"limit": 0}, headers=admin_headers).json()
    error = _resolve(schema, {"$ref": "#/components/schemas/ErrorBody"})
    assert set(body) == set(error["required"]) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}


def _strings(schema: dict[str, Any], node: Any, seen: set[str]) -> list[dict[str, Any]]:
    """Every string schema reachable from ``node`` (following refs once)."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        seen.add(name)
        return _strings(schema, schema["components"]["schemas"][name], seen)
    found = [node] if node.get("type") == "string" else []
    for key in ("items", "additionalProperties", "propertyNames"):
        found += _strings(schema, node.get(key), seen)
    for sub in (node.get("properties") or {}).values():
        found += _strings(schema, sub, seen)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key) or []:
            found += _strings(schema, sub, seen)
    return found


def test_no_request_string_admits_what_the_server_refuses(schema):
    """The server refuses NUL in every string (mlrig.validation): so does the schema."""
    loose = []
    for method, path, operation in _operations(schema):
        roots = [p["schema"] for p in operation.get("parameters", [])]
        roots += [m["schema"] for m in operation.get("requestBody", {}).get("content", {}).values()]
        for root in roots:
            for string in _strings(schema, root, set()):
                if string.get("format") in ("binary", "date-time") or "enum" in string:
                    continue
                pattern = string.get("pattern")
                if pattern is None or re.search(pattern, "a\x00b"):
                    loose.append(f"{method} {path}: {string}")
    assert loose == []


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        ("metric", "accuracy>=0.9", "accuracy~0.9"),
        ("sort", "-metrics.f1", "size"),
        ("tag", "team:core", "team"),
    ],
)
def test_query_rules_are_in_the_schema(schema, rule, good, bad):
    parameters = schema["paths"][f"{API}/model-versions"]["get"]["parameters"]
    if rule == "tag":
        parameters = schema["paths"][f"{API}/models"]["get"]["parameters"]
    node = next(p["schema"] for p in parameters if p["name"] == rule)
    pattern = node.get("items", node).get("pattern") or node["pattern"]
    assert re.search(pattern, good) and not re.search(pattern, bad)


def test_enums_the_server_checks_are_in_the_schema(schema):
    components = schema["components"]["schemas"]
    from mlrig.backends import available_backends

    # the trainers a request may name and expect to run: installed, with their extras
    # (torch-ddp without torch is left out, and refused with the install hint)
    usable = [i.name for i in available_backends("trainers") if not i.missing]
    assert "sklearn" in usable
    assert components["ExperimentCreate"]["properties"]["trainer"]["enum"] == usable
    assert components["SweepCreate"]["properties"]["trainer"]["enum"] == usable
    assert components["StageChange"]["properties"]["stage"]["enum"] == [
        "none",
        "staging",
        "production",
        "archived",
    ]
    role = components["UserCreate"]["properties"]["role"]
    assert role["enum"] == ["viewer", "developer", "deployer", "admin"]


def test_bearer_scheme_and_docs_assets_are_offline(api_client):
    for page in ("/docs", "/redoc"):
        response = api_client.get(page)
        assert response.status_code == 200, page
        html = response.text
        assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", html), html
        assets = re.findall(r"""(?:src|href)=["']?(/[^"'\s>]+)""", html)
        assert assets, html
        for url in assets:
            asset = api_client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url


def test_docs_assets_need_no_token_but_the_api_does(api_client):
    assert api_client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert api_client.get(f"{API}/models").status_code == 401


# --- pagination ---------------------------------------------------------------------


def test_offset_lists_page_with_next_cursor(api_client, admin_headers):
    for name in ("a1", "a2", "a3"):
        response = api_client.post(f"{API}/models", json={"name": name}, headers=admin_headers)
        assert response.status_code == 201, response.text
    seen, params = [], {"limit": 2}
    while True:
        page = api_client.get(f"{API}/models", params=params, headers=admin_headers).json()
        seen += [m["name"] for m in page["items"]]
        if page["next_cursor"] is None:
            break
        params = {"limit": 2, "cursor": page["next_cursor"]}
    assert seen == ["a1", "a2", "a3"]
    bad = api_client.get(f"{API}/models", params={"cursor": "eyJvIjoxfQ"}, headers=admin_headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


# --- defects found by the schemathesis run ------------------------------------------


def test_a_dataset_path_too_long_for_the_file_system_is_422_not_500(api_client, admin_headers):
    body = {"name": "e", "trainer": "sklearn", "dataset": {"uri": "d" * 900, "target": "y"}}
    response = api_client.post(f"{API}/experiments", json=body, headers=admin_headers)
    assert response.status_code == 422, response.text


def test_an_integral_float_step_is_the_integer(api_client, admin_headers):
    created = api_client.post(
        f"{API}/experiments", json={"name": "e", "trainer": "sklearn"}, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    points = {"points": [{"name": "loss", "value": 0.5, "step": 3.0}]}
    response = api_client.post(f"{API}/experiments/e/metrics", json=points, headers=admin_headers)
    assert response.status_code == 200, response.text
    history = api_client.get(f"{API}/experiments/e/metrics", headers=admin_headers).json()
    assert history["metrics"]["loss"]["steps"] == [3]
    points["points"][0]["step"] = 3.5
    response = api_client.post(f"{API}/experiments/e/metrics", json=points, headers=admin_headers)
    assert response.status_code == 422


def _upload(api_client, headers, metadata: str):
    return api_client.post(
        f"{API}/models/m/versions",
        files=[("files", ("model.bin", b"abc"))],
        data={"metadata": metadata},
        headers=headers,
    )


def test_an_unknown_source_experiment_is_404(api_client, admin_headers):
    api_client.post(f"{API}/models", json={"name": "m"}, headers=admin_headers)
    response = _upload(api_client, admin_headers, '{"source_experiment_id": "nope"}')
    assert response.status_code == 404, response.text


def test_a_boolean_is_not_a_metric_value(api_client, admin_headers):
    api_client.post(f"{API}/models", json={"name": "m"}, headers=admin_headers)
    assert _upload(api_client, admin_headers, '{"metrics": {"acc": true}}').status_code == 422
    assert _upload(api_client, admin_headers, '{"metrics": {"acc": 1}}').status_code == 201


@pytest.mark.parametrize("since", ["0.5", "1700000000"])
def test_a_number_is_not_a_time(api_client, admin_headers, since):
    response = api_client.get(f"{API}/audit", params={"since": since}, headers=admin_headers)
    assert response.status_code == 422, response.text


def test_no_nul_pattern_matches_what_it_should():
    assert re.search(NO_NUL, "any text é") and not re.search(NO_NUL, "a\x00")


def test_an_audit_entry_with_an_id_longer_than_its_column_is_kept(db_platform):
    """A 4,000-character id in a path (schemathesis on PostgreSQL): the entry was lost."""
    db_platform.audit.record(
        actor="fuzz", action="delete_version", outcome="failure", resource_id="0" * 4000
    )
    entry = db_platform.audit.query(limit=1)[0]
    assert entry["action"] == "delete_version" and entry["resource_id"] == "0" * 255


def test_version_text_longer_than_its_column_is_422_on_both_databases(db_platform):
    """``code_version`` of 1,000 characters: a 500 on PostgreSQL (VARCHAR(255)) before."""
    from fastapi.testclient import TestClient

    from mlrig.api import create_app

    db_platform.security.create_user(name="root", role="admin")
    token = db_platform.security.create_token(user="root")["token"]
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(db_platform), raise_server_exceptions=False) as client:
        client.post(f"{API}/models", json={"name": "m"}, headers=headers)
        for field, length in (("code_version", 256), ("framework", 101)):
            metadata = f'{{"{field}": "{"x" * length}"}}'
            assert _upload(client, headers, metadata).status_code == 422, field
        assert _upload(client, headers, f'{{"code_version": "{"x" * 255}"}}').status_code == 201


def test_creations_link_to_the_operations_on_what_they_created(schema):
    paths = schema["paths"]
    links = paths[f"{API}/models"]["post"]["responses"]["201"]["links"]
    get = paths[f"{API}/models/{{id}}"]["get"]["operationId"]
    assert links[get]["parameters"] == {"id": "$response.body#/id"}
    version_links = paths[f"{API}/models/{{id}}/versions"]["post"]["responses"]["201"]["links"]
    get_version = paths[f"{API}/models/{{id}}/versions/{{version}}"]["get"]["operationId"]
    assert version_links[get_version]["parameters"] == {
        "id": "$request.path.id",
        "version": "$response.body#/version",
    }
    stage = paths[f"{API}/models/{{id}}/versions/{{version}}/stage"]["post"]["responses"]["200"]
    approve = paths[f"{API}/approvals/{{id}}/approve"]["post"]["operationId"]
    assert stage["links"][approve]["parameters"] == {"id": "$response.body#/request/id"}


def test_swagger_ui_asks_no_outside_validator(api_client):
    assert '"validatorUrl": null' in api_client.get("/docs").text


def test_ci_runs_the_fuzz_env_on_both_databases():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tox = (root / "tox.ini").read_text()
    for env in ("fuzz", "ci"):
        section = tox.split(f"[testenv:{env}]", 1)[1].split("\n[", 1)[0]
        runs = re.findall(r"tests/fuzz/run\.py((?: (?:sqlite|postgresql))+)", section)
        databases = {name for run in runs for name in run.split()}
        assert databases == {"sqlite", "postgresql"}, section  # one run each, or both in one
    assert re.search(r"^env_list = .*\bci\b", tox, re.M)
    assert "-e lint,ci,heavy" in (root / ".ci" / "run").read_text()
