"""Walk every API route with bad input: never a 500, always the one error shape."""

import itertools
import re
import uuid

import pytest

from mlrig.api import create_app

BAD_BODIES = [
    None,
    b"{not json",
    b"[]",
    b'"a string"',
    b'{"name": 123, "role": [], "version": {}, "id": null, "limit": "many"}',
    b"\xff\xfe\x00binary",
]
BAD_QUERIES = [{}, {"limit": "abc", "since": "not-a-date", "offset": "-1", "cursor": "%%%"}]


# Values per path parameter: unknown ids, malformed ones, and real ones (so that bad
# bodies reach the handlers of objects that exist).
PARAM_VALUES = {
    "id": [str(uuid.uuid4()), "not-a-uuid", "x" * 300, "walk"],
    "version": ["1", "nope", "..%2F..%2Fetc"],
    "alias": ["champion", "1bad alias"],
    "path": ["model.bin", "..%2F..%2Fetc%2Fpasswd", "nope/deeper"],
}


def _paths(template):
    names = re.findall(r"{(\w+)(?::\w+)?}", template)
    if not names:
        yield template
        return
    for combo in itertools.product(*(PARAM_VALUES.get(n, ["x"]) for n in names)):
        path = template
        for name, value in zip(names, combo, strict=True):
            path = re.sub(r"{" + name + r"(?::\w+)?}", value, path)
        yield path


def _routes(app):
    """(path template, method) of every operation in the OpenAPI schema under /api/ml."""
    return [
        (path, method.upper())
        for path, item in app.openapi()["paths"].items()
        if path.startswith("/api/ml")
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def test_the_walk_covers_the_api(platform):
    # A guard against the walk silently testing nothing.
    assert len(_routes(create_app(platform))) >= 20


@pytest.mark.parametrize("as_admin", [True, False], ids=["admin", "anonymous"])
def test_no_route_returns_500_for_bad_input(platform, api_client, admin_headers, as_admin):
    admin = platform.security.authenticate(admin_headers["Authorization"].split()[1])
    platform.registry.create_version(
        "walk", files={"model.bin": b"weights"}, actor=admin, create_model=True
    )
    platform.lifecycle.set_alias("walk", "champion", "1", actor=admin)
    headers = admin_headers if as_admin else {}
    failures = []
    for template, method in _routes(api_client.app):
        for path in set(_paths(template)):
            for body in BAD_BODIES if method in {"POST", "PUT", "PATCH"} else [None]:
                for query in BAD_QUERIES:
                    response = api_client.request(
                        method,
                        path,
                        content=body,
                        params=query,
                        headers={**headers, "Content-Type": "application/json"},
                    )
                    status = response.status_code
                    if status >= 500 and not (template.endswith("/health") and status == 503):
                        failures.append(f"{method} {path} {body!r} {query} -> {status}")
                    elif status >= 400:
                        error = response.json().get("error", {})
                        if set(error) != {"code", "message", "details"}:
                            failures.append(f"{method} {path}: bad error shape {response.text}")
    assert failures == []
