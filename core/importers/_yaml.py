"""Read the YAML files MLflow writes (``meta.yaml``, ``MLmodel``).

PyYAML is used when it is installed. It is not a dependency of mlrig, so a small reader
of the block-style subset MLflow writes (``yaml.safe_dump``: nested mappings, ``- ``
lists, plain and quoted scalars, ``[]``/``{}``) stands in otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


def load_yaml(path: Path) -> Any:
    """The document in the YAML file ``path``."""
    text = path.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        return parse_block_yaml(text)
    return yaml.safe_load(text)


def _scalar(text: str) -> Any:
    text = text.strip()
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text == "[]":
        return []
    if text == "{}":
        return {}
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return json.loads(text)
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _lines(text: str) -> list[tuple[int, str]]:
    found = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped == "---":
            continue
        found.append((len(raw) - len(raw.lstrip(" ")), raw.strip()))
    return found


def parse_block_yaml(text: str) -> Any:
    """The block-style YAML subset that ``yaml.safe_dump`` writes, parsed."""
    lines = _lines(text)
    value, _ = _parse(lines, 0, lines[0][0] if lines else 0)
    return value


def _parse(lines: list[tuple[int, str]], index: int, indent: int) -> tuple[Any, int]:
    if index >= len(lines):
        return None, index
    if lines[index][1].startswith("- ") or lines[index][1] == "-":
        return _parse_list(lines, index, indent)
    return _parse_mapping(lines, index, indent)


def _parse_list(lines: list[tuple[int, str]], index: int, indent: int) -> tuple[Any, int]:
    items: list[Any] = []
    while index < len(lines) and lines[index][0] == indent and lines[index][1].startswith("-"):
        rest = lines[index][1][1:].strip()
        if not rest:
            value, index = _parse(lines, index + 1, lines[index + 1][0])
            items.append(value)
        elif re.match(r"^[^'\"\[{][^:]*:( |$)", rest):  # "- key: value" opens a mapping
            lines[index] = (indent + 2, rest)
            value, index = _parse_mapping(lines, index, indent + 2)
            items.append(value)
        else:
            items.append(_scalar(rest))
            index += 1
    return items, index


def _parse_mapping(lines: list[tuple[int, str]], index: int, indent: int) -> tuple[Any, int]:
    mapping: dict[str, Any] = {}
    while index < len(lines) and lines[index][0] == indent:
        line = lines[index][1]
        key, sep, rest = line.partition(": ") if ": " in line else line.rpartition(":")
        if not sep:
            break
        key = _scalar(key)
        index += 1
        if rest.strip():
            while index < len(lines) and lines[index][0] > indent:  # a wrapped long scalar
                rest = f"{rest} {lines[index][1]}"
                index += 1
            mapping[str(key)] = _scalar(rest)
        elif index < len(lines) and (
            lines[index][0] > indent or (lines[index][0] == indent and lines[index][1][:1] == "-")
        ):
            mapping[str(key)], index = _parse(lines, index, lines[index][0])
        else:
            mapping[str(key)] = None
    return mapping, index
