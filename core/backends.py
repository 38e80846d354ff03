"""Named backends: discovery from entry-point metadata, and lazy loading through stevedore.

A backend is the one implementation of a kind that the config file chose
(``[storage] backend = "s3"``). Listing what is installed reads entry-point metadata
only; :func:`load_backend` imports exactly the backend asked for.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any

from mlrig.errors import MissingExtraError, PluginError

#: kind -> entry-point group
KINDS: dict[str, str] = {
    "storage": "mlrig.storage",
    "trainers": "mlrig.trainers",
    "runtimes": "mlrig.runtimes",
    "search": "mlrig.search",
    "monitors": "mlrig.monitors",
    "executors": "mlrig.executors",
    "online_stores": "mlrig.online_stores",
}

#: kind -> the contract class its backends subclass ("module:attr", imported on use)
CONTRACTS: dict[str, str] = {
    "storage": "mlrig.contracts.storage:StorageBackend",
    "trainers": "mlrig.contracts.trainer:Trainer",
    "runtimes": "mlrig.contracts.runtime:ModelRuntime",
    "search": "mlrig.contracts.search:SearchStrategy",
    "monitors": "mlrig.contracts.monitor:Monitor",
    "executors": "mlrig.contracts.executor:Executor",
    "online_stores": "mlrig.contracts.online_store:OnlineStore",
}

HOOKS_GROUP = "mlrig.hooks"

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class BackendInfo:
    """What entry-point metadata says about one installed backend (nothing imported)."""

    kind: str
    name: str
    value: str
    distribution: str | None
    version: str | None
    extras: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default=())

    @property
    def install_hint(self) -> str | None:
        """The pip command that brings the missing optional dependencies, if any."""
        if not self.missing:
            return None
        if self.extras and self.distribution:
            return f"pip install '{self.distribution}[{','.join(self.extras)}]'"
        return "pip install " + " ".join(self.missing)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        msg = f"unknown backend kind {kind!r}; kinds are: {', '.join(KINDS)}"
        raise PluginError(msg)
    return KINDS[kind]


def _distribution_name(dist: metadata.Distribution | None) -> str | None:
    return None if dist is None else dist.metadata["Name"]


def _requirements_of_extras(dist: metadata.Distribution, extras: tuple[str, ...]) -> list[str]:
    names = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        found = _EXTRA_MARKER.search(marker)
        if found and found.group(1) in extras:
            name = _REQUIREMENT_NAME.match(spec)
            if name:
                names.append(name.group(1))
    return names


def _is_installed(requirement: str) -> bool:
    if requirement.lower() == "mlrig":
        return True
    try:
        metadata.distribution(requirement)
    except metadata.PackageNotFoundError:
        return False
    return True


def _info(kind: str, ep: metadata.EntryPoint) -> BackendInfo:
    dist = getattr(ep, "dist", None)
    extras = tuple(ep.extras)
    missing: tuple[str, ...] = ()
    if dist is not None and extras:
        missing = tuple(r for r in _requirements_of_extras(dist, extras) if not _is_installed(r))
    return BackendInfo(
        kind=kind,
        name=ep.name,
        value=ep.value,
        distribution=_distribution_name(dist),
        version=None if dist is None else dist.version,
        extras=extras,
        missing=missing,
    )


#: what the last scan of the installed metadata found, with the path state it was for
_SCANS: dict[Any, Any] = {}
#: (sys.path entry, its mtime) -> whether it holds distributions
_HOLDS_DISTRIBUTIONS: dict[tuple[str, int], bool] = {}


def installed_state() -> tuple[tuple[str, int], ...]:
    """What the installed distributions depend on: the ``sys.path`` folders that hold
    distributions, with their modification times. Installing or removing a distribution
    in a folder changes its mtime; folders without any (a job's working directory) do
    not matter."""
    state = []
    for entry in sys.path:
        try:
            mtime = os.stat(entry or ".").st_mtime_ns
        except OSError:
            continue
        key = (entry, mtime)
        holds = _HOLDS_DISTRIBUTIONS.get(key)
        if holds is None:
            try:
                with os.scandir(entry or ".") as found:
                    holds = any(e.name.endswith((".dist-info", ".egg-info")) for e in found)
            except OSError:  # a zip archive (it may hold eggs) or an unreadable folder
                holds = True
            _HOLDS_DISTRIBUTIONS[key] = holds
        if holds:
            state.append(key)
    return tuple(state)


def while_installed(key: Any, scan: Any) -> Any:
    """``scan()``, remembered under ``key`` while the installed distributions stay the
    same (:func:`installed_state`): a process asks for entry points several times (the
    config's checks, the loader, the hooks), and every ``metadata.entry_points()`` reads
    every distribution's files."""
    state = installed_state()
    if _SCANS.get("state") != state:
        _SCANS.clear()
        _SCANS["state"] = state
    if key not in _SCANS:
        _SCANS[key] = scan()
    return _SCANS[key]


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group`` on ``sys.path`` (read again once a distribution was
    installed or removed)."""
    every = while_installed("entry_points", metadata.entry_points)
    return list(every.select(group=group))


def available_backends(kind: str | None = None) -> list[BackendInfo]:
    """The installed backends of ``kind`` (every kind if ``None``), from metadata alone."""
    kinds = [kind] if kind else list(KINDS)
    found = []
    for k in kinds:
        found += while_installed(("backends", k), lambda k=k: _scan_backends(k))
    return found


def _scan_backends(kind: str) -> list[BackendInfo]:
    group = _check_kind(kind)
    seen = set()
    found = []
    for ep in sorted(entry_points(group), key=lambda e: e.name):
        if ep.name in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(ep.name)
        found.append(_info(kind, ep))
    return found


def backend_names(kind: str) -> list[str]:
    """The names of the installed backends of ``kind``."""
    return [info.name for info in available_backends(kind)]


def usable_backend_names(kind: str) -> list[str]:
    """The names of the installed backends of ``kind`` whose extras are installed too:
    what a request may name and expect to run (the REST schema's enums)."""
    return [info.name for info in available_backends(kind) if not info.missing]


def backend_info(kind: str, name: str) -> BackendInfo:
    """Metadata of one backend; :class:`PluginError` listing the installed names if unknown."""
    for info in available_backends(kind):
        if info.name == name:
            return info
    installed = ", ".join(backend_names(kind)) or "none"
    msg = f"unknown {kind} backend {name!r}; installed: {installed}"
    raise PluginError(msg, details={"kind": kind, "name": name, "installed": installed})


def _missing_extra_error(info: BackendInfo) -> MissingExtraError:
    msg = f"{info.kind} backend {info.name!r} needs: {info.install_hint}"
    return MissingExtraError(msg, details={"missing": list(info.missing)})


@cache
def load_backend(kind: str, name: str) -> type:
    """Import and return the class of backend ``name`` of ``kind``, through stevedore.

    Raises :class:`PluginError` for an unknown name, a module that fails to import or a
    class that does not implement the kind's contract, and :class:`MissingExtraError`
    naming the extra to install when an optional dependency is missing.
    """
    info = backend_info(kind, name)
    if info.missing:
        raise _missing_extra_error(info)
    from stevedore import driver  # imported here: stevedore is not needed to list

    failures: list[BaseException] = []
    try:
        manager = driver.DriverManager(
            namespace=KINDS[kind],
            name=name,
            invoke_on_load=False,
            on_load_failure_callback=lambda _mgr, _ep, exc: failures.append(exc),
        )
        cls = manager.driver
    except Exception as exc:  # stevedore: NoMatches / MultipleMatches
        cause = failures[0] if failures else exc
        if isinstance(cause, ModuleNotFoundError) and info.extras:
            raise _missing_extra_error(
                BackendInfo(**{**info.__dict__, "missing": (cause.name or "?",)})
            ) from cause
        msg = f"{kind} backend {name!r} ({info.value}) failed to load: {cause!r}"
        raise PluginError(msg) from cause
    contract = _import_object(CONTRACTS[kind])
    if not (isinstance(cls, type) and issubclass(cls, contract)):
        msg = (
            f"{kind} backend {name!r} ({info.value}) is not a subclass of "
            f"{contract.__module__}.{contract.__qualname__}"
        )
        raise PluginError(msg)
    return cls


def forget_loaded_backends() -> None:
    """Forget loaded classes and stevedore's per-process entry-point cache.

    stevedore remembers a group's entry points for the life of the process; call this
    after installing or removing a plugin in a running process (tests do).
    """
    from stevedore.extension import ExtensionManager

    load_backend.cache_clear()
    _SCANS.clear()
    ExtensionManager.ENTRY_POINT_CACHE.clear()


def check_backend(info: BackendInfo) -> str | None:
    """Import ``info``'s backend; return why it cannot load, or ``None`` if it can."""
    try:
        load_backend(info.kind, info.name)
    except PluginError as exc:
        return exc.message
    return None


def _import_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
