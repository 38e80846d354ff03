"""The control plane: create, list, change and delete deployments (``model_deployments``).

A deployment serves one model version (pinned, or followed through an alias), with
optional canary versions taking a share of the traffic and a shadow version getting a
copy of it. Rows store the version *name* in ``version`` and the primary version's id in
``model_id`` (the foreign key to ``ml_models``, which the registry's "is it deployed?"
check reads); ``deployment_config`` holds the rest (see :mod:`mlrig.serving.spec`).

The data plane never writes deployments except through :meth:`set_status`, and reads
them only through :meth:`snapshot`, which also re-resolves aliases: a moved alias gives
new targets and a new revision, which the data plane rolls out.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlrig import validation as v
from mlrig.db.models import MLModel, ModelAlias, ModelArtifact, ModelDeployment, User
from mlrig.errors import ConflictError, NotFoundError, ValidationError
from mlrig.registry.views import artifact_view
from mlrig.serving import spec

if TYPE_CHECKING:
    from mlrig.config import Settings
    from mlrig.db.models import RegisteredModel
    from mlrig.hooks import Hooks
    from mlrig.registry import ModelRegistry
    from mlrig.security import AuditTrail, Principal

#: what :meth:`DeploymentService.update` may change
UPDATABLE = frozenset(  # replicas and batching merge into what is set
    {
        "version",
        "alias",
        "runtime",
        "environment",
        "replicas",
        "batching",
        "resources",
        "traffic",
        "shadow",
        "allow_nan",
        "features",
        "status",
    }
)
#: longest status reason kept (a data plane may report a long traceback line)
MAX_REASON = 2000
#: who the audit log names for changes no user made (data plane reports, alias moves)
SYSTEM_ACTOR = "serving"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        msg = f"{field} must be an object"
        raise ValidationError(msg, details={"field": field})
    return value


class DeploymentService:
    """Deployments over the registry. ``platform.deployments``."""

    def __init__(
        self,
        db: Any,
        registry: ModelRegistry,
        hooks: Hooks,
        audit: AuditTrail,
        settings: Settings,
        *,
        features: Callable[[], Any] | None = None,
    ) -> None:
        self.db = db
        self.registry = registry
        self.hooks = hooks
        self.audit = audit
        self.settings = settings
        #: the feature store (``platform.features``), asked only for feature-backed deployments
        self._feature_store = features

    # --- helpers --------------------------------------------------------------------------

    @property
    def _defaults(self) -> dict[str, Any]:
        serving = self.settings.serving
        return {"max_batch_size": serving.max_batch_size, "max_latency_ms": serving.max_latency_ms}

    def _view(self, session: Session, row: ModelDeployment) -> dict[str, Any]:
        return self._views(session, [row])[0]

    def _views(self, session: Session, rows: list[ModelDeployment]) -> list[dict[str, Any]]:
        """Views of ``rows``, their creators' names read in one query."""
        ids = {row.created_by for row in rows if row.created_by is not None}
        names = (
            dict(session.execute(select(User.id, User.name).where(User.id.in_(ids))).all())
            if ids
            else {}
        )
        defaults = self._defaults
        return [
            spec.deployment_view(row, creator=names.get(row.created_by), defaults=defaults)
            for row in rows
        ]

    def _row(self, session: Session, ref: str, *, lock: bool = False) -> ModelDeployment:
        """A live deployment by id or name."""
        v.check_text(ref, field="deployment")
        if len(ref) > 255:  # longer than any name: no such deployment, no query
            msg = f"no deployment {v.shorten(ref, 60)!r}; see: mlrig deployments list"
            raise NotFoundError(msg, details={"deployment": ref[:255]})
        live = ModelDeployment.deleted_at.is_(None)
        key = spec.as_uuid(ref)
        where = ModelDeployment.id == key if key is not None else ModelDeployment.name == ref
        query = select(ModelDeployment).where(where, live)
        if lock:
            query = query.with_for_update()
        row = session.scalar(query)
        if row is None:
            msg = f"no deployment {ref!r}; see: mlrig deployments list"
            raise NotFoundError(msg, details={"deployment": ref})
        return row

    def _facts(self, session: Session, version: MLModel) -> dict[str, Any]:
        """What :func:`spec.choose_runtime` reads of a version: framework and artifacts."""
        prefix = self.registry.artifact_prefix(version)
        artifacts = session.scalars(
            select(ModelArtifact).where(ModelArtifact.model_id == version.id)
        ).all()
        return {
            "id": str(version.id),
            "name": version.name,
            "version": version.version,
            "framework": version.framework,
            "stage": version.stage,
            "artifacts": [artifact_view(a, prefix) for a in artifacts],
        }

    def _target(
        self, session: Session, version: MLModel, runtime: str, installed: Any
    ) -> dict[str, Any]:
        facts = self._facts(session, version)
        resolved = spec.choose_runtime(facts, runtime, installed=installed)
        return {"version": version.version, "version_id": str(version.id), "runtime": resolved}

    def _alias_target(self, session: Session, model: RegisteredModel, alias: str) -> MLModel:
        version_id = session.scalar(
            select(ModelAlias.model_version_id).where(
                ModelAlias.registered_model_id == model.id, ModelAlias.alias == alias
            )
        )
        version = session.get(MLModel, version_id) if version_id is not None else None
        if version is None or version.deleted_at is not None:
            msg = (
                f"model {model.name!r} has no alias {alias!r}; see: mlrig models show {model.name}"
            )
            raise NotFoundError(msg, details={"model": model.name, "alias": alias})
        return version

    def _alias_gone(self, session: Session, model: RegisteredModel, alias: str) -> bool:
        try:
            self._alias_target(session, model, alias)
        except NotFoundError:
            return True
        return False

    def _needs_production(self, environment: str) -> bool:
        return (
            environment == "production"
            and "production" in self.settings.registry.approval_required_for
        )

    def _check_production(self, environment: str, versions: list[MLModel]) -> None:
        """A production deployment serves only versions in the production stage when the
        approval policy guards that stage (else anyone could bypass the approval)."""
        if not self._needs_production(environment):
            return
        for version in versions:
            if version.stage != "production":
                msg = (
                    f"a production deployment needs versions in the production stage "
                    f"([registry] approval_required_for); {version.name} version "
                    f"{version.version} is in {version.stage!r}: request the stage with "
                    f"mlrig models stage {version.name} {version.version} production"
                )
                raise ConflictError(
                    msg,
                    details={"version": version.version, "stage": version.stage},
                )

    def _resolve(
        self,
        session: Session,
        model: RegisteredModel,
        config: dict[str, Any],
        *,
        version_ref: str | None,
        alias: str | None,
        traffic: list[dict[str, Any]],
        shadow: str | None,
        environment: str,
        alias_gone: bool = False,
        features: Mapping[str, Any] | None = None,
    ) -> tuple[MLModel, dict[str, Any]]:
        """The primary version and the config's resolved targets (traffic, shadow).

        :param alias_gone: the followed alias was removed: ``version_ref`` (what it last
            pointed at) is the primary, and the alias stays recorded.
        """
        from mlrig.serving.spec import installed_runtimes

        installed = installed_runtimes()
        runtime = config["runtime"]
        if alias is not None and not alias_gone:
            primary = self._alias_target(session, model, alias)
        else:
            primary = self.registry._version(session, model, str(version_ref))
        first = self._target(session, primary, runtime, installed)
        served = [primary]
        canaries = []
        seen = {primary.id}
        for entry in traffic:
            version = self.registry._version(session, model, entry["version"])
            if version.id in seen:
                msg = (
                    f"traffic: version {version.version} appears twice (or is the primary); "
                    "each canary is another version"
                )
                raise ValidationError(msg, details={"field": "traffic"})
            seen.add(version.id)
            served.append(version)
            canaries.append(
                {**self._target(session, version, runtime, installed), "percent": entry["percent"]}
            )
        shadow_target = None
        if shadow is not None:
            version = self.registry._version(session, model, shadow)
            if version.id == primary.id:
                msg = "shadow: the shadow version must differ from the primary version"
                raise ValidationError(msg, details={"field": "shadow"})
            shadow_target = self._target(session, version, runtime, installed)
            served_or_shadow = [*served, version]
        else:
            served_or_shadow = served
        if features:
            for version in served_or_shadow:
                spec.check_signature_columns(
                    version.signature, features, f"{version.name} version {version.version}"
                )
        self._check_production(environment, served)
        config.update(
            {
                "model": model.name,
                "model_id": str(model.id),
                "alias": alias,
                "version_id": first["version_id"],
                "resolved_runtime": first["runtime"],
                "traffic": canaries,
                "shadow": shadow_target,
            }
        )
        return primary, config

    def _features(self, value: object) -> dict[str, Any] | None:
        """A ``features`` field checked and resolved against the feature store: the refs
        normalised to ``view:name``, the entity keys defaulted to the views' join keys.

        :raises NotFoundError: unknown feature references (listed).
        :raises ValidationError: a bad shape, keys that do not cover the views' join keys,
            a view that is not online or is computed on demand.
        """
        checked = spec.check_features(value)
        if checked is None:
            return None
        if self._feature_store is None:
            msg = "this platform has no feature store: a deployment cannot declare features"
            raise ValidationError(msg, details={"field": "features"})
        store = self._feature_store()
        groups = store.resolve(checked["refs"])
        owner: dict[str, str] = {}
        join_keys: list[str] = []
        batch = []
        for view, names in groups:
            for name in names:
                owner[name] = view.name
            if getattr(view, "join_keys", None) is None:  # on demand: keyed by its inputs'
                batch += [v for v, _ in store.resolve(list(view.inputs), batch_only=True)]
            else:
                batch.append(view)
        for view in batch:
            if not getattr(view, "online", True):
                msg = (
                    f"features.refs: view {view.name!r} is not online (online = false): its "
                    "values are not materialised for serving"
                )
                raise ValidationError(msg, details={"field": "features.refs", "view": view.name})
            join_keys += [k for k in view.join_keys if k not in join_keys]
        names = [r.rsplit(":", 1)[-1] for r in checked["refs"]]
        checked["refs"] = [f"{owner[n]}:{n}" for n in names]
        keys = checked["entity_keys"] or join_keys
        missing = [k for k in join_keys if k not in keys]
        extra = [k for k in keys if k not in join_keys]
        if missing or extra:
            problem = "; ".join(
                p
                for p in (
                    f"misses join key(s) {', '.join(missing)}" if missing else "",
                    f"{', '.join(extra)} is no join key of the views" if extra else "",
                )
                if p
            )
            msg = f"features.entity_keys {problem} (the views are keyed by {', '.join(join_keys)})"
            raise ValidationError(
                msg, details={"field": "features.entity_keys", "join_keys": join_keys}
            )
        checked["entity_keys"] = keys
        clash = sorted(set(checked["request_fields"]) & set(keys))
        if clash:
            msg = f"features.request_fields: {', '.join(clash)} is an entity key"
            raise ValidationError(msg, details={"field": "features.request_fields"})
        return checked

    def feature_users(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Feature name -> the live deployments (names) whose ``features.refs`` use it.

        For the feature store, which refuses a breaking type change of a feature in use.
        """
        wanted = set(names)
        found: dict[str, list[str]] = {}
        with self.db.session() as session:
            rows = session.execute(
                select(ModelDeployment.name, ModelDeployment.deployment_config).where(
                    ModelDeployment.deleted_at.is_(None)
                )
            ).all()
        for name, config in rows:
            for ref in ((config or {}).get("features") or {}).get("refs") or ():
                feature = str(ref).rsplit(":", 1)[-1]
                if feature in wanted:
                    found.setdefault(feature, []).append(name)
        return found

    def _fire(self, action: str, view: dict[str, Any]) -> None:
        self.hooks.deployment_changed(
            {"deployment_id": view["id"], "action": action, "deployment": view}
        )

    def _system_audit(self, action: str, view: dict[str, Any], details: dict[str, Any]) -> None:
        """Audit a change no API call made (the API's middleware audits its own calls)."""
        self.audit.record(
            actor=SYSTEM_ACTOR,
            action=action,
            outcome="success",
            resource_type="deployments",
            resource_id=view["id"],
            details=details,
        )

    # --- create ---------------------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        model: str,
        actor: Principal,
        version: str | None = None,
        alias: str | None = None,
        runtime: str = spec.AUTO,
        environment: str = "development",
        replicas: Mapping[str, Any] | None = None,
        batching: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        traffic: list[Any] | None = None,
        shadow: Any = None,
        allow_nan: bool = False,
        features: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Deploy a version (``version``) or whatever ``alias`` points at; status pending.

        ``features`` makes it feature-backed (see :func:`mlrig.serving.spec.check_features`):
        requests send entity keys, the data plane reads the features from the online store.

        :raises ValidationError: a bad field, a version without artifacts, no runtime.
        :raises NotFoundError: no such model, version or alias.
        :raises ConflictError: the name is taken; a production deployment of a version
            that is not in the production stage (when the approval policy says so).
        """
        spec.check_name(name)
        spec.check_ref(model, "model")
        with self.db.session() as session:  # an unknown model is 404 before any other rule
            self.registry._model(session, model)
        if (version is None) == (alias is None):
            msg = "give exactly one of version and alias"
            raise ValidationError(msg, details={"field": "version"})
        if version is not None:
            spec.check_ref(version, "version")
        if alias is not None:
            spec.check_ref(alias, "alias")
        if not isinstance(allow_nan, bool):
            msg = "allow_nan must be true or false"
            raise ValidationError(msg, details={"field": "allow_nan"})
        config: dict[str, Any] = {
            "runtime": spec.check_runtime_name(runtime),
            "replicas": spec.check_replicas(replicas if replicas is not None else {}),
            "batching": spec.check_batching(batching if batching is not None else {}),
            "allow_nan": allow_nan,
        }
        environment = spec.check_choice(environment, spec.ENVIRONMENTS, "environment")
        checked_resources = spec.check_resources(resources if resources is not None else {})
        canaries = spec.parse_traffic(traffic if traffic is not None else [])
        shadow_ref = spec.parse_shadow(shadow)
        feature_config = self._features(features)
        if feature_config is not None:
            config["features"] = feature_config
        try:
            with self.db.session() as session:
                registered = self.registry._model(session, model)
                primary, config = self._resolve(
                    session,
                    registered,
                    config,
                    version_ref=version,
                    alias=alias,
                    traffic=canaries,
                    shadow=shadow_ref,
                    environment=environment,
                    features=feature_config,
                )
                row = ModelDeployment(
                    id=uuid.uuid4(),
                    name=name,
                    model_id=primary.id,
                    version=primary.version,
                    environment=environment,
                    status="pending",
                    resources=checked_resources,
                    deployment_config=config,
                    created_by=actor.user_id,
                )
                row.endpoint_url = spec.ENDPOINT.format(id=row.id)
                session.add(row)
                session.flush()
                view = self._view(session, row)
        except IntegrityError:
            msg = f"a deployment named {name!r} exists; pick another name or update it"
            raise ConflictError(msg, details={"name": name}) from None
        self._fire("created", view)
        return view

    # --- read -----------------------------------------------------------------------------

    def get(self, ref: str) -> dict[str, Any]:
        """A live deployment by id or name (a deleted one is 404)."""
        with self.db.session() as session:
            return self._view(session, self._row(session, ref))

    def list(
        self,
        *,
        status: str | None = None,
        environment: str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of live deployments, oldest first: ``{"items", "next_cursor"}``."""
        from mlrig.registry.search import encode_cursor

        v.check_int(limit, field="limit", low=1, high=1000)
        v.check_int(offset, field="offset", low=0)
        if cursor is not None:
            offset = v.decode_cursor(cursor, {"offset": int})["offset"]
        query = select(ModelDeployment).where(ModelDeployment.deleted_at.is_(None))
        if status is not None:
            query = query.where(
                ModelDeployment.status == spec.check_choice(status, spec.STATUSES, "status")
            )
        if environment is not None:
            env = spec.check_choice(environment, spec.ENVIRONMENTS, "environment")
            query = query.where(ModelDeployment.environment == env)
        with self.db.session() as session:
            if model is not None:
                spec.check_ref(model, "model")
                model_id = str(self.registry._model(session, model).id)
                query = query.where(
                    ModelDeployment.deployment_config["model_id"].as_string() == model_id
                )
            query = query.order_by(ModelDeployment.created_at, ModelDeployment.id)
            rows = session.scalars(query.offset(offset).limit(limit + 1)).all()
            more = len(rows) > limit
            items = self._views(session, list(rows[:limit]))
        return {
            "items": items,
            "next_cursor": encode_cursor({"offset": offset + limit}) if more else None,
        }

    # --- change ---------------------------------------------------------------------------

    def update(self, ref: str, *, actor: Principal, **changes: Any) -> dict[str, Any]:
        """Change a deployment: ``version``/``alias`` (the target: one of them; giving one
        drops the other), ``runtime``, ``environment``, ``replicas``, ``batching``,
        ``resources``, ``traffic`` (``[]``: no canaries), ``shadow`` (``None``: none),
        ``allow_nan``, ``status`` (``inactive`` stops, ``active`` starts again).

        A change of what is served moves an active deployment to ``deploying`` until the
        data plane reports it loaded (a failed one back to ``pending``).
        """
        unknown = sorted(set(changes) - UPDATABLE)
        if unknown:
            msg = f"cannot change {', '.join(unknown)}; changeable: {', '.join(sorted(UPDATABLE))}"
            raise ValidationError(msg, details={"fields": unknown})
        if changes.get("version") is not None and changes.get("alias") is not None:
            msg = "give version or alias, not both"
            raise ValidationError(msg, details={"field": "version"})
        wanted = changes.get("status")
        if wanted is not None:
            spec.check_choice(wanted, spec.REQUESTED_STATUSES, "status")
        if "allow_nan" in changes and not isinstance(changes["allow_nan"], bool):
            msg = "allow_nan must be true or false"
            raise ValidationError(msg, details={"field": "allow_nan"})
        feature_config = self._features(changes["features"]) if "features" in changes else None
        with self.db.session() as session:
            row = self._row(session, ref, lock=True)
            before = spec.revision(row, self._view(session, row))
            old_status = row.status
            config = dict(row.deployment_config or {})
            if changes.get("runtime") is not None:
                config["runtime"] = spec.check_runtime_name(changes["runtime"])
            # nested objects merge: --max-latency-ms alone keeps the batch size
            if changes.get("replicas") is not None:
                config["replicas"] = spec.check_replicas(
                    {**(config.get("replicas") or {}), **_mapping(changes["replicas"], "replicas")}
                )
            if changes.get("batching") is not None:
                config["batching"] = spec.check_batching(
                    {**(config.get("batching") or {}), **_mapping(changes["batching"], "batching")}
                )
            if "allow_nan" in changes:
                config["allow_nan"] = changes["allow_nan"]
            if "features" in changes:  # null: a plain deployment again
                if feature_config is None:
                    config.pop("features", None)
                else:
                    config["features"] = feature_config
            if changes.get("resources") is not None:
                row.resources = spec.check_resources(changes["resources"])
            environment = row.environment or "development"
            if changes.get("environment") is not None:
                environment = spec.check_choice(
                    changes["environment"], spec.ENVIRONMENTS, "environment"
                )
            alias, version_ref = config.get("alias"), row.version
            if changes.get("alias") is not None:
                alias, version_ref = spec.check_ref(changes["alias"], "alias"), None
            elif changes.get("version") is not None:
                alias, version_ref = None, spec.check_ref(changes["version"], "version")
            if "traffic" in changes:
                traffic = spec.parse_traffic(changes["traffic"] or [])
            else:
                traffic = [
                    {"version": t["version_id"], "percent": t["percent"]}
                    for t in config.get("traffic") or []
                ]
            if "shadow" in changes:
                shadow = spec.parse_shadow(changes["shadow"])
            else:
                shadow = (config.get("shadow") or {}).get("version_id")
            if alias is None and changes.get("version") is None:
                version_ref = config.get("version_id") or row.version  # the pinned version
            if set(changes) - {"status"}:  # stopping or starting resolves nothing: it works
                # even when the model, the alias or a canary version is gone
                registered = self.registry._model(session, config["model_id"])
                # a followed alias that was removed: keep serving what it pointed at
                alias_gone = (
                    alias is not None
                    and "alias" not in changes
                    and self._alias_gone(session, registered, alias)
                )
                if alias_gone:
                    version_ref = config.get("version_id") or row.version
                primary, config = self._resolve(
                    session,
                    registered,
                    config,
                    version_ref=version_ref,
                    alias=alias,
                    traffic=traffic,
                    shadow=shadow,
                    environment=environment,
                    alias_gone=alias_gone,
                    features=config.get("features"),
                )
                row.deployment_config = config
                row.model_id = primary.id
                row.version = primary.version
                row.environment = environment
            after = spec.revision(
                row, spec.deployment_view(row, creator=None, defaults=self._defaults)
            )
            if wanted == "inactive":
                row.status, row.status_reason = "inactive", f"stopped by {actor.name}"
            elif wanted == "active" and old_status in ("inactive", "failed"):
                row.status, row.status_reason = "pending", None
            elif after != before:
                if old_status == "active":
                    row.status, row.status_reason = "deploying", None
                elif old_status == "failed":
                    row.status, row.status_reason = "pending", None
            row.updated_at = _now()
            session.flush()
            view = self._view(session, row)
        action = {"inactive": "stopped", "active": "started"}.get(wanted or "", "updated")
        if wanted == "active" and old_status not in ("inactive", "failed"):
            action = "updated"
        self._fire(action, view)
        return view

    def delete(self, ref: str, *, actor: Principal) -> dict[str, Any]:
        """Soft-delete: the row stays (inference records point at it), status inactive,
        the name is freed for a new deployment."""
        with self.db.session() as session:
            row = self._row(session, ref, lock=True)
            config = dict(row.deployment_config or {})
            config["deleted_name"] = row.name
            row.deployment_config = config
            # the unique index covers deleted rows too: rename to free the name
            row.name = f"{row.name}~deleted~{row.id.hex}"
            row.deleted_at = _now()
            row.status, row.status_reason = "inactive", f"deleted by {actor.name}"
            session.flush()
            view = self._view(session, row)
        self._fire("deleted", view)
        return view

    # --- the data plane's side ------------------------------------------------------------

    def set_status(
        self,
        deployment_id: str,
        status: str,
        reason: str | None = None,
        *,
        revision: str | None = None,
    ) -> dict[str, Any] | None:
        """A data plane reports ``deploying``, ``active`` or ``failed`` (with ``reason``).

        Idempotent: an unchanged status and reason write nothing and fire no hook. A
        report on a stopped or deleted deployment is ignored, and so is one made for an
        older ``revision`` than the current one (the target changed meanwhile). Returns
        the view when something changed, else ``None``.
        """
        spec.check_choice(status, spec.REPORTED_STATUSES, "status")
        key = spec.as_uuid(deployment_id)
        if key is None:
            msg = f"no deployment {deployment_id!r} (an id is expected)"
            raise NotFoundError(msg, details={"deployment": deployment_id})
        reason = v.scrub(reason)[:MAX_REASON] if reason is not None else None
        with self.db.session() as session:
            row = session.get(ModelDeployment, key)
            if row is None:
                msg = f"no deployment {deployment_id!r}"
                raise NotFoundError(msg, details={"deployment": deployment_id})
            if revision is not None and revision != spec.revision(row, self._view(session, row)):
                return None
            values: dict[str, Any] = {"status": status, "status_reason": reason}
            if status == "active":
                values["deployed_at"] = _now()
            # one conditional update: of N replicas reporting the same change, one wins
            changed = session.execute(
                update(ModelDeployment)
                .where(
                    ModelDeployment.id == key,
                    ModelDeployment.deleted_at.is_(None),
                    ModelDeployment.status != "inactive",
                    or_(
                        ModelDeployment.status != status,
                        ModelDeployment.status_reason.is_distinct_from(reason),
                    ),
                )
                .values(**values, updated_at=_now())
                .execution_options(synchronize_session=False)
            ).rowcount
            if not changed:
                return None
            session.expire(row)
            view = self._view(session, row)
        self._system_audit(
            "deployment_status", view, {"status": status, "reason": reason, "revision": revision}
        )
        self._fire("status_changed", view)
        return view

    def snapshot(self) -> list[dict[str, Any]]:
        """Every deployment to serve (live, not inactive): its view plus ``targets`` and
        ``revision``. Aliases are re-resolved now; a moved alias is written back (the
        deployment goes to ``deploying`` and the hook fires), so the data plane sees new
        targets and rolls them out."""
        moves: list[tuple[ModelDeployment, dict[str, Any]]] = []
        out = []
        with self.db.session() as session:
            rows = session.scalars(
                select(ModelDeployment)
                .where(ModelDeployment.deleted_at.is_(None), ModelDeployment.status != "inactive")
                .order_by(ModelDeployment.created_at, ModelDeployment.id)
            ).all()
            for row in rows:
                if (row.deployment_config or {}).get("alias"):
                    moved = self._follow_alias(session, row)
                    if moved is not None:
                        moves.append((row, moved))
            for row, view in zip(rows, self._views(session, list(rows)), strict=True):
                view["targets"] = spec.targets(row)
                view["revision"] = spec.revision(row, view)
                out.append(view)
            self._feature_view_versions(session, out)
            moved_views = [(self._view(session, row), details) for row, details in moves]
        for view, details in moved_views:
            self._system_audit("deployment_alias_moved", view, details)
            self._fire("alias_moved", view)
        return out

    @staticmethod
    def _feature_view_versions(session: Session, views: list[dict[str, Any]]) -> None:
        """Give each feature-backed deployment of a snapshot ``feature_views`` (view name
        -> definition version): a changed view (its TTL...) is re-resolved by the data
        plane without a new revision. One query, only when some deployment has features."""
        wanted = {
            ref.split(":", 1)[0]
            for view in views
            for ref in (view.get("features") or {}).get("refs") or ()
        }
        if not wanted:
            return
        from mlrig.db.models.features import FeatureView

        versions = dict(
            session.execute(
                select(FeatureView.name, FeatureView.version).where(FeatureView.name.in_(wanted))
            ).all()
        )
        for view in views:
            refs = (view.get("features") or {}).get("refs")
            if refs:
                names = dict.fromkeys(r.split(":", 1)[0] for r in refs)
                view["feature_views"] = {n: versions.get(n) for n in names}

    def _follow_alias(self, session: Session, row: ModelDeployment) -> dict[str, Any] | None:
        """Point ``row`` at the version its alias names now; what changed, or ``None``.

        A removed alias, a version that cannot be served, or one a production deployment
        may not serve keeps the current version, with the reason in ``status_reason``.
        """
        config = dict(row.deployment_config or {})
        alias = config["alias"]
        try:
            model_id = uuid.UUID(config["model_id"])
        except (KeyError, ValueError, TypeError):
            return None
        version_id = session.scalar(
            select(ModelAlias.model_version_id).where(
                ModelAlias.registered_model_id == model_id, ModelAlias.alias == alias
            )
        )
        if version_id is not None and str(version_id) == config.get("version_id"):
            return None
        version = session.get(MLModel, version_id) if version_id is not None else None
        problem = None
        if version is None or version.deleted_at is not None:
            problem = f"alias {alias!r} no longer exists; serving version {row.version}"
        elif self._needs_production(row.environment or "") and version.stage != "production":
            problem = (
                f"alias {alias!r} moved to version {version.version}, which is not in "
                f"production; serving version {row.version}"
            )
        else:
            try:
                target = self._target(session, version, config.get("runtime", spec.AUTO), None)
                if config.get("features"):
                    spec.check_signature_columns(
                        version.signature, config["features"], f"version {version.version}"
                    )
            except ValidationError as exc:
                problem = f"alias {alias!r} moved to version {version.version}: {exc.message}"
        if problem is not None:
            if row.status_reason != problem:
                row.status_reason = problem
            return None
        old = row.version
        config.update(version_id=target["version_id"], resolved_runtime=target["runtime"])
        # conditional on the version it had: of N replicas reading at once, one moves it
        # (and fires the hook); the others see the moved row
        moved = session.execute(
            update(ModelDeployment)
            .where(ModelDeployment.id == row.id, ModelDeployment.model_id == row.model_id)
            .values(
                deployment_config=config,
                version=target["version"],
                model_id=version.id,
                status="deploying" if row.status == "active" else row.status,
                status_reason=None,
                updated_at=_now(),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        session.refresh(row)
        if not moved:
            return None
        return {"alias": alias, "from": old, "to": row.version}
