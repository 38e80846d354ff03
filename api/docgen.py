"""Render the REST reference (docs/rest.md) from the app's OpenAPI schema.

``python -m mlrig.api.docgen > docs/rest.md``; a test fails when the file is stale.
"""

from __future__ import annotations

from typing import Any

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI schema of the built-in routes (no third-party plugin routes)."""
    from mlrig.api import create_app
    from mlrig.config import Settings
    from mlrig.hooks import get_plugin_manager
    from mlrig.platform import Platform

    platform = Platform(Settings(), plugin_manager=get_plugin_manager(load_entrypoints=False))
    return create_app(platform).openapi()


def render(schema: dict[str, Any]) -> str:
    """Markdown: one section per tag, one entry per operation."""
    lines = [
        "# REST API reference",
        "",
        "Generated from the OpenAPI schema by `python -m mlrig.api.docgen > docs/rest.md`;",
        "the live schema is at `/openapi.json` and interactive docs at `/docs` on a running",
        "server. Every route is under `/api/ml` and needs `Authorization: Bearer <token>`",
        "except health. Errors always have the shape",
        '`{"error": {"code": "...", "message": "...", "details": {...}}}`.',
        "",
        "Every input follows [the input rules](input.md), stated in the schema as well:",
        "no NUL characters or lone surrogates in any string, integers within 64 bits,",
        "**a datetime without a time zone is taken as UTC** (0001-01-02 to 9999-12-30",
        "after conversion), free-form JSON at most 32 levels deep and 256 KiB, bounded",
        "tags, lists and names, opaque cursors passed back unchanged; a value that breaks",
        "one is a 422 `validation_error` and nothing is stored.",
        "",
    ]
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, item in schema["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                operation = item[method]
                tag = (operation.get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append((method.upper(), path, operation))
    for tag in sorted(by_tag):
        lines += [f"## {tag}", ""]
        for method, path, operation in by_tag[tag]:
            lines.append(f"### `{method} {path}`")
            lines.append("")
            if operation.get("summary"):
                lines.append(operation["summary"] + ".")
            description = operation.get("description", "").strip()
            if description and description != operation.get("summary"):
                lines += ["", description]
            params = [
                f"`{p['name']}` ({p['in']}{', required' if p.get('required') else ''})"
                for p in operation.get("parameters", [])
            ]
            if params:
                lines += ["", "Parameters: " + ", ".join(params) + "."]
            body = operation.get("requestBody", {}).get("content", {})
            if body:
                kinds = ", ".join(f"`{k}`" for k in body)
                ref = next(iter(body.values())).get("schema", {}).get("$ref", "")
                name = ref.rsplit("/", 1)[-1] if ref else ""
                lines += ["", f"Body: {kinds}" + (f" (`{name}`)" if name else "") + "."]
            codes = ", ".join(sorted(operation.get("responses", {})))
            lines += ["", f"Responses: {codes}.", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(openapi_schema()), end="")
