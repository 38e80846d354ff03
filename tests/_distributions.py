"""Build a real (tiny) installed distribution in a folder, to test plugin discovery."""

from __future__ import annotations

from pathlib import Path


def make_distribution(
    site: Path,
    name: str,
    *,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str],
    requires: list[str] | None = None,
    version: str = "0.1.0",
) -> Path:
    """Write ``name``'s dist-info and modules under ``site`` (put ``site`` on sys.path)."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires or []]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    groups = []
    for group, eps in entry_points.items():
        groups.append(f"[{group}]")
        groups += [f"{ep_name} = {value}" for ep_name, value in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(groups) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    return site
