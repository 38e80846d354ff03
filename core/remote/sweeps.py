"""The sweeps of a server (``/api/ml/sweeps``), with the signatures of
:class:`mlrig.sweeps.service.SweepService` and its views (non-finite values as floats,
as the service gives them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlrig.remote import RemoteService, params, segment

if TYPE_CHECKING:
    from mlrig.security import Principal

#: trials per request when all of a sweep's trials are read
TRIALS_PAGE = 1000


def _path(ref: Any, *rest: str) -> str:
    return "/".join(["/sweeps", segment(str(ref)), *rest])


def floats(view: Any) -> Any:
    """``view`` with the wire's ``"NaN"``/``"Infinity"``/``"-Infinity"`` in the value
    fields of trials, best trials and best-so-far points back as floats."""
    from mlrig.nonfinite import from_json

    if isinstance(view, list):
        return [floats(item) for item in view]
    if not isinstance(view, dict):
        return view
    out = dict(view)
    for key in ("value", "best"):
        if type(out.get(key)) is str:
            out[key] = from_json(out[key])
    for key in ("best", "trials", "best_so_far"):
        if isinstance(out.get(key), (dict, list)):
            out[key] = floats(out[key])
    return out


class RemoteSweeps(RemoteService):
    """Create, list, show, stop a server's sweeps; read their trials and results."""

    attribute = "sweeps"

    def create(
        self,
        *,
        name: str,
        trainer: str,
        space: dict[str, Any],
        objective: str,
        actor: Principal | None = None,
        dry_run: bool = False,
        **fields: Any,
    ) -> dict[str, Any]:
        """``POST /sweeps`` (the creator is the token's user)."""
        body = {
            "name": name,
            "trainer": trainer,
            "space": space,
            "objective": objective,
            **params(**fields),
        }
        if dry_run:
            body["dry_run"] = True
        return floats(self.http.request("POST", "/sweeps", json=body))

    def list(
        self, *, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict[str, Any]]:
        query = params(status=status, limit=limit, offset=offset or None)
        return floats(self.http.request("GET", "/sweeps", params=query)["items"])

    def get(self, ref: Any) -> dict[str, Any]:
        return floats(self.http.request("GET", _path(ref)))

    def trials(
        self, ref: Any, *, state: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[dict[str, Any]]:
        query = params(state=state, limit=limit, offset=offset or None)
        return floats(self.http.request("GET", _path(ref, "trials"), params=query)["items"])

    def results(self, ref: Any) -> dict[str, Any]:
        return floats(self.http.request("GET", _path(ref, "results")))

    def stop(self, ref: Any, *, actor: Principal | None = None) -> dict[str, Any]:
        return floats(self.http.request("POST", _path(ref, "stop")))
