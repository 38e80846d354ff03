"""What the API tests share about the app under test."""

from __future__ import annotations

from typing import Any


def list_routes(app: Any) -> list[str]:
    """The list routes of ``app``: parameterless GET paths whose 200 answer is the page
    envelope (``items`` and ``next_cursor``), so a new list route can't escape a test."""
    schema = app.openapi()
    components = schema["components"]["schemas"]
    routes = []
    for path, item in schema["paths"].items():
        get = item.get("get")
        if get is None or "{" in path:
            continue
        content = get["responses"].get("200", {}).get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref")
        fields = components[ref.rsplit("/", 1)[-1]].get("properties", {}) if ref else {}
        if {"items", "next_cursor"} <= fields.keys():
            routes.append(path)
    return routes
