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


def _schema_name(schema: dict[str, Any]) -> str:
    """``Name`` of a ``$ref`` schema, ``list of Name`` for arrays, else the type."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name.startswith("Page_") and name.endswith("_"):  # pydantic's name of Page[X]
            return f"Page[{name[5:-1]}]"
        return name
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if options:
        return " or ".join(_schema_name(o) for o in options) + " or null" * (
            len(options) < len(schema["anyOf"])
        )
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        return f"list of {_schema_name(schema['items'])}"
    return str(schema.get("type", "any"))


def _parameter(parameter: dict[str, Any]) -> str:
    """`` `name` (query, required): description.`` with the rule the schema states."""
    schema = parameter.get("schema", {})
    options = [o for o in schema.get("anyOf", [schema]) if o.get("type") != "null"]
    rule = options[0] if options else schema
    facts = [parameter["in"]]
    if parameter.get("required"):
        facts.append("required")
    if "enum" in rule:
        facts.append("one of " + ", ".join(f"`{v}`" for v in rule["enum"]))
    text = f"- `{parameter['name']}` ({', '.join(facts)})"
    description = (parameter.get("description") or schema.get("description") or "").strip()
    return text + (f": {description}" if description else "")


def _responses(operation: dict[str, Any]) -> list[str]:
    """One line per status code: what it means and its body."""
    lines = []
    for code, answer in sorted(operation.get("responses", {}).items()):
        content = answer.get("content", {})
        bodies = [
            f"`{media}`" + (f" `{_schema_name(c['schema'])}`" if c.get("schema") else "")
            for media, c in content.items()
        ]
        description = (answer.get("description") or "").strip().rstrip(".")
        line = f"- **{code}** {description}"
        if bodies:
            line += " — " + ", ".join(bodies)
        lines.append(line)
    return lines


def render(schema: dict[str, Any]) -> str:
    """Markdown: one section per tag, one entry per operation with its parameters, body
    and every status code it can answer."""
    lines = [
        "# REST API reference",
        "",
        "Generated from the OpenAPI schema by `python -m mlrig.api.docgen > docs/rest.md`",
        "(a test fails when this file is stale); the live schema is at `/openapi.json`,",
        "interactive docs at `/docs` (Swagger UI) and `/redoc` on a running server, served",
        "by the server itself (no CDN). Every route is under `/api/ml` and needs",
        "`Authorization: Bearer <token>` except health. Errors always have the shape",
        '`{"error": {"code": "...", "message": "...", "details": {...}}}` (`ErrorBody`).',
        'Every list answers `{"items": [...], "next_cursor": "..." | null}`: pass',
        "`next_cursor` back as `cursor` for the next page (null on the last one).",
        "The schema states the rules the server enforces (patterns, enums, bounds); the",
        "names and rules of each body are in `/openapi.json` under `components`.",
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
            if operation.get("security"):
                lines += ["", "Needs a bearer token."]
            params = [_parameter(p) for p in operation.get("parameters", [])]
            if params:
                lines += ["", "Parameters:", "", *params]
            body = operation.get("requestBody", {}).get("content", {})
            if body:
                kinds = ", ".join(
                    f"`{media}`" + (f" (`{_schema_name(c['schema'])}`)" if c.get("schema") else "")
                    for media, c in body.items()
                )
                lines += ["", f"Body: {kinds}."]
            lines += ["", "Responses:", "", *_responses(operation), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(openapi_schema()), end="")
