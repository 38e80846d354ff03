"""The feature store's façade (``platform.features``): definitions, reads, pushes,
materialisation. The API, the CLI and :class:`mlrig.Client` are thin layers over it.

Views (what the methods return, the REST API's bodies)::

    entity:  {"name", "join_keys", "description", "created_by", "created_at", "updated_at"}
    feature: {"name", "view", "type", "expression", "description", "tags", "pii",
              "entities", "join_keys", "data_source", "version", "created_by",
              "created_at", "updated_at"}
    view:    {"name", "kind", "entities", "join_keys", "source", "ttl_seconds", "online",
              "tags", "description", "function", "inputs", "request_fields",
              "features": [feature...], "version", "materialized_until", "created_by",
              "created_at", "updated_at"}
    history: {"feature", "versions": [{"version", "view", "change", "definition",
              "changed_by", "changed_at"}]}            # oldest first
    online:  {"features": [names], "results": [{name: value}], "missing": [[names]]}

Feature names are unique across the store; a reference is ``name`` or ``view:name``.
PII: a feature tagged ``pii`` is masked (``[features] pii_mask``: ``hash``, the keyed
HMAC-SHA256 hex of the value's text, or ``null``) for readers without ``Permission.READ_PII``; every
clear read by a holder is audited (action ``features.read_pii``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mlrig import validation as v
from mlrig.db.models import (
    FeatureDefinition,
    FeatureDefinitionVersion,
    FeatureEntity,
    FeatureStatistics,
    FeatureView,
    ModelDeployment,
    User,
)
from mlrig.errors import ConflictError, MlrigError, NotFoundError, ValidationError
from mlrig.features import definitions as d
from mlrig.features.spec import (
    PII_TAG,
    EntitySpec,
    FeatureSpec,
    FeatureViewSpec,
    OnDemandViewSpec,
)

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.orm import Session

    from mlrig.platform import Platform
    from mlrig.security import Principal

View = dict[str, Any]
AnyView = FeatureViewSpec | OnDemandViewSpec
Requests = list[tuple[AnyView, list[str]]]

#: the most rows one push, one JSON training set or one batch read may carry
MAX_PUSH_ROWS = 10_000
MAX_TRAINING_ROWS = 10_000
#: how often resolve() asks the database whether definitions changed elsewhere
RESOLVE_CHECK_SECONDS = 1.0
#: distinct reference lists resolve() keeps
RESOLVE_CACHE_SIZE = 1024
#: the most values (entities x features) a read may have to run on a server's event loop
#: (:meth:`FeatureService.reads_locally`): 1 x 50 takes about 0.2 ms; 2,000 stays a few ms
LOCAL_READ_MAX_VALUES = 2_000
#: experiment statuses that are final
_ENDED = ("completed", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


#: the name of the PII hash mask's key among the installation's secrets
PII_MASK_SECRET = "features.pii_mask"


def mask_value(value: Any, mode: str, key: bytes) -> Any:
    """``value`` masked: ``None`` stays ``None``; ``null`` mode gives ``None``; ``hash``
    the HMAC-SHA256 hex, under the installation's ``key``, of the value's text (strings
    as they are, others as JSON). Keyed, so a reader of masks cannot confirm a guessed
    value (an email, a phone number) by hashing it; one key per installation, so equal
    values still mask alike and can be joined or counted."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or mode == "null":
        return None
    text = value if isinstance(value, str) else json.dumps(_plain(value), default=str)
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _plain(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


class FeatureService:
    """Feature definitions and values over the platform's database and stores."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        # resolve() on the online read path: refs -> (generation, requests), the
        # generation being the views table's (count, max updated_at, sum version), read
        # at most every RESOLVE_CHECK_SECONDS; a change in this process clears it at once
        self._resolved: dict[tuple[tuple[str, ...], bool], Requests] = {}
        self._pii_names: dict[tuple[Any, ...], list[str]] = {}
        # source key -> the columns PII features over that source read (per generation)
        self._pii_columns: tuple[Any, dict[tuple[str, str], set[str]]] | None = None
        self._generation: tuple[Any, ...] | None = None
        self._checked_at = 0.0
        self._cache_lock = threading.Lock()
        self._pii_mask_key: bytes | None = None

    def _forget(self) -> None:
        with self._cache_lock:
            self._resolved.clear()
            self._pii_names.clear()
            self._pii_columns = None
            self._generation = None
            self._checked_at = 0.0

    def _current_generation(self) -> tuple[Any, ...] | None:
        """The views' generation, from the database at most every
        :data:`RESOLVE_CHECK_SECONDS` (else the last one read)."""
        now = time.monotonic()
        if self._generation is not None and now - self._checked_at < RESOLVE_CHECK_SECONDS:
            return self._generation
        with self.db.session() as session:
            row = session.execute(
                select(
                    func.count(FeatureView.id),
                    func.max(FeatureView.updated_at),
                    func.sum(FeatureView.version),
                    func.count(FeatureDefinition.id),
                )
                .select_from(FeatureDefinition)
                .outerjoin(FeatureView, FeatureView.id == FeatureDefinition.view_id)
            ).one()
        generation = tuple(row)
        with self._cache_lock:
            if generation != self._generation:
                self._resolved.clear()
                self._pii_names.clear()
            self._generation, self._checked_at = generation, now
        return generation

    @property
    def db(self) -> Any:
        return self.platform.db

    # --- entities -------------------------------------------------------------------------

    def create_entity(self, body: Mapping[str, Any], *, actor: Principal) -> View:
        """:raises ValidationError: a bad field. :raises ConflictError: the name is taken."""
        spec = d.check_entity(body)
        try:
            with self.db.session() as session:
                if session.scalar(select(FeatureEntity.id).where(FeatureEntity.name == spec.name)):
                    raise _taken("entity", spec.name)
                row = FeatureEntity(
                    name=spec.name,
                    join_keys=list(spec.join_keys),
                    description=spec.description or None,
                    created_by=actor.user_id,
                )
                session.add(row)
                session.flush()
        except IntegrityError:
            raise _taken("entity", spec.name) from None
        return self.get_entity(spec.name)

    def list_entities(self, *, limit: int = 100, offset: int = 0) -> list[View]:
        with self.db.session() as session:
            rows = session.execute(
                select(FeatureEntity, User.name)
                .outerjoin(User, User.id == FeatureEntity.created_by)
                .order_by(FeatureEntity.name)
                .limit(limit)
                .offset(offset)
            ).all()
            return [_entity_view(row, creator) for row, creator in rows]

    def get_entity(self, name: str) -> View:
        with self.db.session() as session:
            found = session.execute(
                select(FeatureEntity, User.name)
                .outerjoin(User, User.id == FeatureEntity.created_by)
                .where(FeatureEntity.name == name)
            ).first()
            if found is None:
                raise _not_found("entity", name)
            return _entity_view(*found)

    def _entities(self, session: Session) -> dict[str, EntitySpec]:
        return {
            row.name: EntitySpec(row.name, tuple(row.join_keys), row.description or "")
            for row in session.scalars(select(FeatureEntity))
        }

    # --- views ----------------------------------------------------------------------------

    def _check_view(self, body: Mapping[str, Any], session: Session) -> AnyView:
        kind = d.view_kind(body)
        if kind == "batch":
            return d.check_batch_view(body, self._entities(session))
        spec = d.check_on_demand_view(body)
        return spec

    def _validate(self, spec: AnyView) -> None:
        """The checks that read data or code: the source (the offline store's
        validate_source), an on-demand view's function and inputs."""
        if isinstance(spec, FeatureViewSpec):
            try:
                from mlrig.features.offline import validate_source
            except ImportError:  # the offline store is part of the package; a partial
                # install (no features extra) still gets the local file checked
                _check_local_file(spec)
            else:
                try:
                    validate_source(self.platform, spec)
                except ValidationError as exc:  # say which field of the body it is about
                    details = exc.details
                    column = details.get("column")
                    if details.get("feature"):
                        where = f"features.{details['feature']}"
                    elif column and column in (
                        spec.source.timestamp_field,
                        spec.source.created_timestamp_field,
                    ):
                        where = "source.timestamp_field"
                    elif "uri" in details:
                        where = "source.uri"
                    elif "query" in details:
                        where = "source.query"
                    else:
                        where = "source"
                    details.setdefault("field", where)
                    raise
            return
        _check_function(spec.function)
        if spec.inputs:
            try:
                self.resolve(spec.inputs, batch_only=True)
            except NotFoundError as exc:
                raise ValidationError(
                    f"inputs: {exc.message}", details={"field": "inputs", **exc.details}
                ) from None

    def create_view(self, body: Mapping[str, Any], *, actor: Principal) -> View:
        """A view with its features (all new names).

        :raises ValidationError: a bad field, a missing file or column, an unknown entity.
        :raises ConflictError: the view's name, or one of its features' names, is taken.
        """
        with self.db.session() as session:
            spec = self._check_view(body, session)
        _check_rights(spec, {}, actor)
        with self.db.session() as session:
            spec = self._derive_pii(session, spec)
        self._validate(spec)
        try:
            with self.db.session() as session:
                if session.scalar(select(FeatureView.id).where(FeatureView.name == spec.name)):
                    raise _taken("feature view", spec.name)
                self._check_feature_names_free(session, [f.name for f in spec.features])
                row = FeatureView(id=uuid.uuid4(), created_by=actor.user_id, version=1)
                _fill_view(row, spec)
                session.add(row)
                session.flush()
                for position, feature in enumerate(spec.features):
                    self._add_feature(session, row, spec, feature, position, actor=actor)
                session.flush()
        except IntegrityError:
            raise _taken("feature view or feature", spec.name) from None
        self._forget()
        return self.get_view(spec.name)

    def _check_feature_names_free(self, session: Session, names: Sequence[str]) -> None:
        taken = session.execute(
            select(FeatureDefinition.name, FeatureView.name)
            .outerjoin(FeatureView, FeatureView.id == FeatureDefinition.view_id)
            .where(FeatureDefinition.name.in_(list(names)))
        ).all()
        if taken:
            order = {n: i for i, n in enumerate(names)}
            name, view = min(taken, key=lambda row: order.get(row[0], 0))
            where = f" (in view {view!r})" if view else ""
            msg = (
                f"a feature named {name!r} exists{where}; feature names are unique across "
                "the store: pick another name"
            )
            raise ConflictError(msg, details={"name": name, "view": view})

    def _add_feature(
        self,
        session: Session,
        view: FeatureView,
        spec: AnyView,
        feature: FeatureSpec,
        position: int,
        *,
        actor: Principal,
    ) -> None:
        session.add(
            FeatureDefinition(
                name=feature.name,
                description=feature.description or None,
                feature_type=feature.dtype,
                data_source=d.source_text(getattr(spec, "source", None)),
                transformation_logic=feature.expression,
                tags=list(feature.tags),
                schema_definition={"dtype": feature.dtype},
                created_by=actor.user_id,
                view_id=view.id,
                version=1,
                pii=feature.pii,
                position=position,
            )
        )
        session.add(
            FeatureDefinitionVersion(
                feature_name=feature.name,
                view_name=view.name,
                version=1,
                definition=_with_note(d.feature_definition(feature), spec, feature.name),
                changed_by=actor.name,
                change="created",
            )
        )

    def list_views(
        self,
        *,
        kind: str | None = None,
        entity: str | None = None,
        tag: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[View]:
        with self.db.session() as session:
            query = select(FeatureView).order_by(FeatureView.name)
            if kind is not None:
                query = query.where(FeatureView.kind == kind)
            rows = list(session.scalars(query))
            rows = [
                r
                for r in rows
                if (entity is None or entity in (r.entities or []))
                and (tag is None or tag in (r.tags or []))
            ][offset : offset + limit]
            return [self._view_view(session, r) for r in rows]

    def get_view(self, name: str) -> View:
        with self.db.session() as session:
            return self._view_view(session, self._view_row(session, name))

    def _view_row(self, session: Session, name: str) -> FeatureView:
        row = session.scalar(select(FeatureView).where(FeatureView.name == name))
        if row is None:
            raise _not_found("feature view", name)
        return row

    def _view_view(self, session: Session, row: FeatureView) -> View:
        features = self._feature_rows(session, row)
        creator = session.scalar(select(User.name).where(User.id == row.created_by))
        entities = self._entities(session)
        join_keys = [
            k for e in row.entities or [] for k in entities.get(e, EntitySpec(e, ())).join_keys
        ]
        return {
            "name": row.name,
            "kind": row.kind,
            "entities": list(row.entities or []),
            "join_keys": join_keys,
            "source": row.source,
            "ttl_seconds": row.ttl_seconds,
            "online": row.online,
            "tags": list(row.tags or []),
            "description": row.description or "",
            "function": row.function,
            "inputs": list(row.inputs or []),
            "request_fields": dict(row.request_fields or {}),
            "features": [_feature_view(f, row, join_keys, None) for f in features],
            "version": row.version,
            "materialized_until": iso(row.materialized_until),
            "created_by": creator,
            "created_at": iso(row.created_at),
            "updated_at": iso(row.updated_at),
        }

    @staticmethod
    def _feature_rows(session: Session, view: FeatureView) -> list[FeatureDefinition]:
        return list(
            session.scalars(
                select(FeatureDefinition)
                .where(FeatureDefinition.view_id == view.id)
                .order_by(FeatureDefinition.position, FeatureDefinition.name)
            )
        )

    def update_view(self, name: str, body: Mapping[str, Any], *, actor: Principal) -> View:
        """Replace a view's definition (the whole body, as at creation; ``name`` may be
        left out). Features left out are removed, new ones added, changed ones get a new
        version. A type change or removal of a feature a deployment uses is refused (409).
        """
        body = dict(d._mapping(body, "body"))
        body.setdefault("name", name)
        if body["name"] != name:
            msg = f"name {body['name']!r} differs from the view's {name!r}; views are not renamed"
            raise ValidationError(msg, details={"field": "name"})
        with self.db.session() as session:
            row = self._view_row(session, name)
            spec = self._check_view(body, session)
            if spec_kind(spec) != row.kind:
                msg = f"view {name!r} is a {row.kind} view; its kind cannot change"
                raise ValidationError(msg, details={"field": "kind"})
            old = {f.name: _feature_spec(f) for f in self._feature_rows(session, row)}
        _check_rights(spec, old, actor)
        with self.db.session() as session:
            spec = self._derive_pii(session, spec)
        new = {f.name: f for f in spec.features}
        removed = [n for n in old if n not in new]
        retyped = [n for n in old if n in new and d.is_breaking(old[n], new[n])]
        self._refuse_if_deployed(removed, "removing", name)
        self._refuse_if_deployed(retyped, "changing the type of", name)
        self._validate(spec)
        with self.db.session() as session:
            self.db.begin_write(session)
            row = self._view_row(session, name)
            rows = {f.name: f for f in self._feature_rows(session, row)}
            added = [n for n in new if n not in rows]
            if added:
                self._check_feature_names_free(session, added)
            changed = False
            for feature_name in removed:
                session.delete(rows[feature_name])
                changed = True
            for position, feature in enumerate(spec.features):
                held = rows.get(feature.name)
                if held is None:
                    self._add_feature(session, row, spec, feature, position, actor=actor)
                    changed = True
                    continue
                if _feature_spec(held) != feature or held.position != position:
                    changed |= self._update_feature_row(
                        session, row, held, feature, actor=actor, view_spec=spec
                    )
                    held.position = position
            before = _view_fields(row)
            _fill_view(row, spec)
            if changed or _view_fields(row) != before:
                row.version = (row.version or 1) + 1
            try:
                session.flush()
            except IntegrityError:
                raise _taken("feature", ", ".join(added)) from None
        self._forget()
        return self.get_view(name)

    def view_spec(self, name: str) -> AnyView:
        """The plain definition of view ``name``. :raises NotFoundError: no such view."""
        with self.db.session() as session:
            row = self._view_row(session, name)
            return self._spec(session, row, self._entities(session))

    def _spec(
        self, session: Session, row: FeatureView, entities: Mapping[str, EntitySpec]
    ) -> AnyView:
        features = tuple(_feature_spec(f) for f in self._feature_rows(session, row))
        if row.kind != "on_demand":
            columns = self._source_pii_columns(session).get(
                d.source_key(row.source, row.name), set()
            )
            features = tuple(_tag_pii(f) if _reads(f, columns) else f for f in features)
        if row.kind == "on_demand":
            return OnDemandViewSpec(
                name=row.name,
                function=row.function or "",
                inputs=tuple(row.inputs or ()),
                features=features,
                request_fields=dict(row.request_fields or {}),
                description=row.description or "",
                tags=tuple(row.tags or ()),
                version=row.version,
            )
        return FeatureViewSpec(
            name=row.name,
            entities=tuple(entities[e] for e in row.entities or [] if e in entities),
            source=d.source_from_dict(row.source or {"kind": "push"}),
            features=features,
            ttl_seconds=row.ttl_seconds,
            description=row.description or "",
            tags=tuple(row.tags or ()),
            online=row.online,
            version=row.version,
            extra={"materialized_until": row.materialized_until},
        )

    # --- PII follows the source column -----------------------------------------------------

    def _source_pii_columns(
        self, session: Session, *, without_view: str | None = None
    ) -> dict[tuple[str, str], set[str]]:
        """Source key -> the columns the PII features of the views over it read (cached
        per generation; ``without_view`` leaves one view out, uncached)."""
        generation = self._generation
        cached = self._pii_columns
        if without_view is None and cached is not None and cached[0] == generation:
            return cached[1]
        query = (
            select(FeatureView.name, FeatureView.source, FeatureDefinition)
            .join(FeatureView, FeatureView.id == FeatureDefinition.view_id)
            .where(FeatureDefinition.pii.is_(True), FeatureView.kind != "on_demand")
        )
        if without_view is not None:
            query = query.where(FeatureView.name != without_view)
        found: dict[tuple[str, str], set[str]] = {}
        for view_name, source, feature in session.execute(query):
            found.setdefault(d.source_key(source, view_name), set()).update(
                d.column_refs(feature.transformation_logic, feature.name)
            )
        if without_view is None and generation is not None:
            with self._cache_lock:
                self._pii_columns = (generation, found)
        return found

    def _derive_pii(self, session: Session, spec: AnyView) -> AnyView:
        """``spec`` with every feature that reads a column a PII feature over the same
        source reads (in any view, this one included) tagged ``pii``; the names so
        tagged, with the columns, in ``spec.extra["pii_derived"]``."""
        if not isinstance(spec, FeatureViewSpec):
            return spec
        key = d.source_key(d.source_dict(spec.source), spec.name)
        columns = set(self._source_pii_columns(session, without_view=spec.name).get(key, ()))
        derived: dict[str, list[str]] = {}
        features = list(spec.features)
        while True:  # a newly tagged feature's columns are PII too (over-tagging is safe)
            for f in features:
                if f.pii:
                    columns |= d.column_refs(f.expression, f.name)
            more = [i for i, f in enumerate(features) if not f.pii and _reads(f, columns)]
            if not more:
                break
            for i in more:
                f = features[i]
                refs = d.column_refs(f.expression, f.name)
                derived[f.name] = sorted(refs & columns) or sorted(refs)
                features[i] = _tag_pii(f)
        if not derived:
            return spec
        out = dataclasses.replace(spec, features=tuple(features))
        out.extra["pii_derived"] = derived
        return out

    # --- features -------------------------------------------------------------------------

    def create_feature(self, body: Mapping[str, Any], *, actor: Principal) -> View:
        """One feature added to an existing view: ``{"view", "name", "type", ...}``."""
        body = dict(d._mapping(body, "body"))
        view_name = body.pop("view", None)
        if view_name is None:
            msg = "view is required: the feature view the feature is added to"
            raise ValidationError(msg, details={"field": "view"})
        d.check_name(view_name, field="view")
        feature = d.check_feature(body, field="body")
        current = self.get_view(view_name)
        definition = _definition_body(current)
        definition["features"].append(d.feature_definition(feature))
        with self.db.session() as session:
            self._check_feature_names_free(session, [feature.name])
        self.update_view(view_name, _clean(definition), actor=actor)
        return self.get_feature(feature.name)

    def list_features(
        self,
        *,
        type: str | None = None,
        source: str | None = None,
        tag: str | None = None,
        entity: str | None = None,
        view: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[View]:
        """Features by name. ``source``: ``file``, ``sql``, ``push``, ``on_demand`` or a
        file source's uri; ``tag``, ``entity``: features carrying the tag / of views
        keyed by the entity."""
        with self.db.session() as session:
            query = (
                select(FeatureDefinition, FeatureView)
                .outerjoin(FeatureView, FeatureView.id == FeatureDefinition.view_id)
                .order_by(FeatureDefinition.name)
            )
            if type is not None:
                query = query.where(FeatureDefinition.feature_type == type)
            if view is not None:
                query = query.where(FeatureView.name == view)
            if source == "file":
                query = query.where(
                    FeatureDefinition.data_source.not_in(("sql", "push", "on_demand"))
                )
            elif source is not None:
                query = query.where(FeatureDefinition.data_source == source)
            python_filter = tag is not None or entity is not None
            if not python_filter:
                query = query.limit(limit).offset(offset)
            rows = session.execute(query).all()
            if python_filter:
                rows = [
                    (f, w)
                    for f, w in rows
                    if (tag is None or tag in (f.tags or []))
                    and (entity is None or (w is not None and entity in (w.entities or [])))
                ][offset : offset + limit]
            return self._feature_views(session, rows)

    def _feature_views(self, session: Session, rows: Sequence[Any]) -> list[View]:
        entities = self._entities(session)
        users = {
            uid: name
            for uid, name in session.execute(
                select(User.id, User.name).where(
                    User.id.in_({f.created_by for f, _ in rows if f.created_by})
                )
            )
        }
        out = []
        for feature, view in rows:
            keys = [
                k
                for e in (view.entities if view is not None else None) or []
                for k in entities.get(e, EntitySpec(e, ())).join_keys
            ]
            out.append(_feature_view(feature, view, keys, users.get(feature.created_by)))
        return out

    def get_feature(self, ref: str) -> View:
        view_name, name = d.check_ref(ref, field="name")
        with self.db.session() as session:
            found = session.execute(
                select(FeatureDefinition, FeatureView)
                .outerjoin(FeatureView, FeatureView.id == FeatureDefinition.view_id)
                .where(FeatureDefinition.name == name)
            ).first()
            if found is None or (view_name is not None and found[1].name != view_name):
                raise _not_found("feature", ref)
            return self._feature_views(session, [found])[0]

    def update_feature(self, ref: str, body: Mapping[str, Any], *, actor: Principal) -> View:
        """Change a feature's ``type``, ``expression``, ``description`` or ``tags`` (the
        fields given; the rest kept). A new version is recorded when something changed.

        :raises ConflictError: a type change while a deployment uses the feature.
        """
        body = dict(d._mapping(body, "body"))
        d._only(body, ("name", "view", "type", "expression", "description", "tags"), "")
        current = self.get_feature(ref)
        for key in ("name", "view"):
            if key in body and body[key] != current[key]:
                msg = f"{key} cannot change ({body[key]!r} != {current[key]!r})"
                raise ValidationError(v.scrub(msg), details={"field": key})
            body.pop(key, None)
        definition = _definition_body(self.get_view(current["view"]))
        for feature in definition["features"]:
            if feature["name"] == current["name"]:
                feature.update(body)
        self.update_view(current["view"], _clean(definition), actor=actor)
        return self.get_feature(current["name"])

    def _update_feature_row(
        self,
        session: Session,
        view: FeatureView,
        row: FeatureDefinition,
        feature: FeatureSpec,
        *,
        actor: Principal,
        view_spec: AnyView | None = None,
    ) -> bool:
        if _feature_spec(row) == feature:
            return False
        row.feature_type = feature.dtype
        row.transformation_logic = feature.expression
        row.description = feature.description or None
        row.tags = list(feature.tags)
        row.schema_definition = {"dtype": feature.dtype}
        row.pii = feature.pii
        row.version = (row.version or 1) + 1
        session.add(
            FeatureDefinitionVersion(
                feature_name=feature.name,
                view_name=view.name,
                version=row.version,
                definition=_with_note(d.feature_definition(feature), view_spec, feature.name),
                changed_by=actor.name,
                change="updated",
            )
        )
        return True

    def feature_history(self, ref: str) -> View:
        """Every definition the feature has had, oldest first, with who and when."""
        current = self.get_feature(ref)
        with self.db.session() as session:
            rows = session.scalars(
                select(FeatureDefinitionVersion)
                .where(FeatureDefinitionVersion.feature_name == current["name"])
                .order_by(FeatureDefinitionVersion.version)
            )
            return {
                "feature": current["name"],
                "versions": [
                    {
                        "version": r.version,
                        "view": r.view_name,
                        "change": r.change,
                        "definition": r.definition,
                        "changed_by": r.changed_by,
                        "changed_at": iso(r.changed_at),
                    }
                    for r in rows
                ],
            }

    def _refuse_if_deployed(self, names: Sequence[str], doing: str, view: str) -> None:
        if not names:
            return
        users = self.feature_users(names)
        used = {n: users[n] for n in names if users.get(n)}
        if used:
            name, deployments = next(iter(used.items()))
            msg = (
                f"{doing} feature {name!r} of view {view!r} would break the deployment(s) "
                f"{', '.join(deployments)} that use it; add a new feature instead, or remove "
                "it from those deployments first"
            )
            raise ConflictError(msg, details={"features": used})

    def feature_users(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Feature name -> the live deployments whose ``features`` refs use it."""
        serving = getattr(self.platform, "deployments", None)
        users = getattr(serving, "feature_users", None)
        if callable(users):
            return dict(users(names))
        wanted = set(names)
        found: dict[str, list[str]] = {}
        with self.db.session() as session:
            for dep_name, config in session.execute(
                select(ModelDeployment.name, ModelDeployment.deployment_config).where(
                    ModelDeployment.deleted_at.is_(None)
                )
            ):
                refs = ((config or {}).get("features") or {}).get("refs") or []
                for ref in refs:
                    feature = str(ref).rpartition(":")[2]
                    if feature in wanted:
                        found.setdefault(feature, []).append(dep_name)
        return found

    def resolve(self, refs: Sequence[str], *, batch_only: bool = False) -> Requests:
        """``refs`` (``name`` or ``view:name``) grouped by view, in first-seen order.

        :raises NotFoundError: unknown names (all listed) or a name in another view.
        :raises ValidationError: a malformed reference.
        """
        key = (tuple(refs), batch_only)
        self._current_generation()
        cached = self._resolved.get(key)
        if cached is not None:
            return [(spec, list(names)) for spec, names in cached]
        resolved = self._resolve(refs, batch_only=batch_only)
        with self._cache_lock:
            if len(self._resolved) >= RESOLVE_CACHE_SIZE:
                self._resolved.clear()
            self._resolved[key] = [(spec, list(names)) for spec, names in resolved]
        return resolved

    def _resolve(self, refs: Sequence[str], *, batch_only: bool) -> Requests:
        parsed = [d.check_ref(r, field="features") for r in refs]
        names = list(dict.fromkeys(n for _, n in parsed))
        with self.db.session() as session:
            rows = session.execute(
                select(FeatureDefinition.name, FeatureView)
                .join(FeatureView, FeatureView.id == FeatureDefinition.view_id)
                .where(FeatureDefinition.name.in_(names))
            ).all()
            where = {n: w for n, w in rows}
            unknown = [
                (f"{view}:{name}" if view else name)
                for view, name in parsed
                if name not in where or (view is not None and where[name].name != view)
            ]
            if unknown:
                msg = f"unknown feature(s): {', '.join(unknown[:20])}"
                raise NotFoundError(msg, details={"features": unknown})
            if batch_only:
                on_demand = [n for n in names if where[n].kind == "on_demand"]
                if on_demand:
                    msg = f"on-demand features cannot be inputs: {', '.join(on_demand)}"
                    raise ValidationError(msg, details={"features": on_demand})
            entities = self._entities(session)
            specs: dict[str, AnyView] = {}
            grouped: dict[str, list[str]] = {}
            for name in names:
                view = where[name]
                if view.name not in specs:
                    specs[view.name] = self._spec(session, view, entities)
                grouped.setdefault(view.name, []).append(name)
        return [(specs[view], grouped[view]) for view in grouped]

    # --- values ---------------------------------------------------------------------------

    def _pii(self, requests: Requests) -> list[str]:
        """The asked features that are PII: tagged so, or on-demand features computed
        from a PII input (their values carry it)."""
        key = tuple((spec.name, spec.version, tuple(names)) for spec, names in requests)
        found = self._pii_names.get(key)
        if found is None:
            found = []
            for spec, names in requests:
                tainted = isinstance(spec, OnDemandViewSpec) and bool(
                    spec.inputs and self._pii(self.resolve(spec.inputs, batch_only=True))
                )
                found += [n for n in names if tainted or _is_pii(spec, n)]
            if len(self._pii_names) >= RESOLVE_CACHE_SIZE:
                self._pii_names.clear()
            self._pii_names[key] = found
        return list(found)

    def _audit_pii(self, names: Sequence[str], rows: int, actor: Principal | None) -> None:
        if not names:
            return
        self.platform.audit.record(
            actor=actor.name if actor is not None else None,
            action="features.read_pii",
            outcome="success",
            resource_type="feature",
            resource_id=",".join(names),
            details={"features": list(names), "rows": rows},
        )

    @property
    def _mask_mode(self) -> str:
        return self.platform.settings.features.pii_mask

    @property
    def pii_mask_key(self) -> bytes:
        """The key of the ``hash`` mask: made once per installation, kept in the database
        (:func:`mlrig.security.secrets.installation_secret`), read once per process."""
        key = self._pii_mask_key
        if key is None:
            from mlrig.security.secrets import installation_secret

            key = self._pii_mask_key = installation_secret(self.platform.db, PII_MASK_SECRET)
        return key

    def reads_locally(self, features: Sequence[str], entities: int, *, can_read_pii: bool) -> bool:
        """Whether :meth:`get_online_features` of ``features`` for ``entities`` rows would
        touch only local files and do little work: a server may then run it on its event
        loop, where a thread hop costs more than the read (1 x 50 features over HTTP: 0.39
        instead of 0.94 ms in the app). True only when the platform database is SQLite (its
        generation check and name lookups are local reads that never wait, in WAL mode),
        the store's reads are local (:attr:`OnlineStore.local_reads`), the read is at most
        :data:`LOCAL_READ_MAX_VALUES` values, no on-demand view runs user code, and no PII
        read is to be audited nor the PII mask's key to be fetched (a write may wait for
        the write lock)."""
        if entities * len(features) > LOCAL_READ_MAX_VALUES:
            return False
        if self.platform.db.dialect != "sqlite":
            return False
        if not getattr(self.platform.online_store, "local_reads", False):
            return False
        try:
            requests = self.resolve(_refs(features))
        except MlrigError:
            return False  # the full call answers the error
        return self._loop_safe(requests, can_read_pii)

    def get_online_features(
        self,
        features: Sequence[str],
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        request_data: Sequence[Mapping[str, Any]] | None = None,
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> View:
        """The latest live values of ``features`` for each entity row (one dict of join key
        -> value per row). Unknown or expired keys are not errors: their values are
        ``None`` and listed in ``missing`` (per row)."""
        from mlrig.features.online import read_online

        refs = _refs(features)
        rows = self._online_rows(entity_rows, request_data)
        requests = self.resolve(refs)
        values, missing = read_online(
            self.platform.online_store,
            requests,
            rows,
            request_data=request_data,
            resolve=self.resolve,
        )
        return self._online_answer(requests, values, missing, can_read_pii, actor)

    async def get_online_features_async(
        self,
        features: Sequence[str],
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        request_data: Sequence[Mapping[str, Any]] | None = None,
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> View:
        """:meth:`get_online_features` for an event loop (the same answer). The store's
        async read is awaited on the loop when nothing else of the call would block it:
        the store has one (:attr:`OnlineStore.async_reads`), the references were resolved
        within the last :data:`RESOLVE_CHECK_SECONDS`, no on-demand view is asked for and
        no PII read is to be audited. Otherwise the whole call runs in a thread."""
        from mlrig.features.online import read_online_async

        store = self.platform.online_store
        native = getattr(store, "async_reads", False)  # (a store not built on OnlineStore)
        requests = self._resolved_fresh(_refs(features)) if native else None
        if requests is None or not self._loop_safe(requests, can_read_pii):
            call = functools.partial(
                self.get_online_features,
                features,
                entity_rows,
                request_data=request_data,
                can_read_pii=can_read_pii,
                actor=actor,
            )
            # the loop's own executor: cheaper per hop than anyio.to_thread (no capacity
            # limiter or cancel scope: 0.10 instead of 0.13 ms for an empty call, uvloop)
            return await asyncio.get_running_loop().run_in_executor(None, call)
        rows = self._online_rows(entity_rows, request_data)
        values, missing = await read_online_async(store, requests, rows)
        return self._online_answer(requests, values, missing, can_read_pii, actor)

    def _online_rows(
        self,
        entity_rows: Sequence[Mapping[str, Any]],
        request_data: Sequence[Mapping[str, Any]] | None,
    ) -> list[dict[str, Any]]:
        rows = _check_entity_rows(
            entity_rows, self.platform.settings.features.max_entities_per_request
        )
        if request_data is not None:
            if not isinstance(request_data, Sequence) or len(request_data) != len(rows):
                msg = "request_data must be a list with one object per entity row"
                raise ValidationError(msg, details={"field": "request_data"})
        return rows

    def _online_answer(
        self,
        requests: Requests,
        values: list[dict[str, Any]],
        missing: list[list[str]],
        can_read_pii: bool,
        actor: Principal | None,
    ) -> View:
        """The read's answer: PII masked for readers without the permission, else the
        read audited."""
        names = [n for _, ns in requests for n in ns]
        pii = self._pii(requests)
        if pii and not can_read_pii:
            mode, key = self._mask_mode, self.pii_mask_key
            for row in values:
                for name in pii:
                    if name in row:
                        row[name] = mask_value(row[name], mode, key)
        elif pii:
            self._audit_pii(pii, len(values), actor)
        return {
            "features": names,
            "results": values
            if all(len(row) == len(names) for row in values)
            else [{n: row.get(n) for n in names} for row in values],
            "missing": missing,
        }

    def _resolved_fresh(self, refs: Sequence[str]) -> Requests | None:
        """:meth:`resolve`'s answer when it needs no database read (cached, and the
        generation checked within :data:`RESOLVE_CHECK_SECONDS`), else ``None``."""
        if self._generation is None or time.monotonic() - self._checked_at >= RESOLVE_CHECK_SECONDS:
            return None
        cached = self._resolved.get((tuple(refs), False))
        if cached is None:
            return None
        return [(spec, list(names)) for spec, names in cached]

    def _loop_safe(self, requests: Requests, can_read_pii: bool) -> bool:
        """Whether reading ``requests`` runs no user code (on-demand views) and writes
        nothing (a PII read's audit row, the PII mask's key made): what an event loop
        must not wait on."""
        from mlrig.features.online import has_on_demand

        if has_on_demand(requests):
            return False
        if not self._pii(requests):
            return True
        if can_read_pii:
            return False  # audited
        # masked: the hash mask's key is read (or made: a write) once per process
        return self._pii_mask_key is not None or self._mask_mode != "hash"

    def feature_values(
        self,
        ref: str,
        entity_rows: Sequence[Mapping[str, Any]],
        *,
        as_of: datetime | None = None,
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> View:
        """One feature's values for entity rows: online (the latest live value), or with
        ``as_of`` the offline store's value as of then (a point-in-time lookup). The
        answer: :meth:`get_online_features`'s, plus ``entities`` (the rows)."""
        rows = [dict(r) for r in entity_rows]
        if as_of is None:
            answer = self.get_online_features([ref], rows, can_read_pii=can_read_pii, actor=actor)
            return {**answer, "entities": rows}
        when = v.as_utc(as_of, field="as_of").isoformat()
        result = self.training_set(
            [ref],
            [{**r, "event_timestamp": when} for r in rows],
            can_read_pii=can_read_pii,
            actor=actor,
        )
        names = result["features"]
        return {
            "features": names,
            "entities": rows,
            "results": [{n: r.get(n) for n in names} for r in result["rows"]],
            "missing": [[n for n in names if r.get(n) is None] for r in result["rows"]],
        }

    def get_historical_features(
        self,
        entity_df: pd.DataFrame,
        features: Sequence[str],
        *,
        timestamp_column: str = "event_timestamp",
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> pd.DataFrame:
        """A point-in-time-correct training set: ``entity_df`` (join keys and
        ``timestamp_column``), its rows and order kept, plus one column per feature."""
        from mlrig.features import offline

        refs = d.check_refs(features)
        requests = self.resolve(refs)
        batch: dict[str, tuple[FeatureViewSpec, list[str]]] = {}
        on_demand: list[tuple[OnDemandViewSpec, list[str]]] = []
        for spec, names in requests:
            if isinstance(spec, OnDemandViewSpec):
                on_demand.append((spec, names))
            else:
                batch[spec.name] = (spec, list(names))
        asked = {n for _, ns in requests for n in ns}
        for spec, _ in on_demand:
            for input_spec, names in self.resolve(spec.inputs, batch_only=True):
                held = batch.setdefault(input_spec.name, (input_spec, []))  # type: ignore[arg-type]
                held[1].extend(n for n in names if n not in held[1])
        frame = offline.historical_features(
            self.platform, entity_df, list(batch.values()), timestamp_column=timestamp_column
        )
        if on_demand:
            from mlrig.features.ondemand import apply_on_demand

            for spec, names in on_demand:
                computed = apply_on_demand(spec, frame)
                for name in names:
                    frame[name] = computed[name].to_numpy()
        extra = [n for _, ns in batch.values() for n in ns if n not in asked]
        if extra:
            frame = frame.drop(columns=extra)
        pii = self._pii(requests)
        if pii and not can_read_pii:
            mode, key = self._mask_mode, self.pii_mask_key
            for name in pii:
                frame[name] = frame[name].map(lambda x: mask_value(x, mode, key)).astype(object)
        elif pii:
            self._audit_pii(pii, len(frame), actor)
        return frame

    def training_set(
        self,
        features: Sequence[str],
        entities: Sequence[Mapping[str, Any]],
        *,
        timestamp_column: str = "event_timestamp",
        can_read_pii: bool = True,
        actor: Principal | None = None,
    ) -> View:
        """:meth:`get_historical_features` over JSON rows (at most
        :data:`MAX_TRAINING_ROWS`): ``{"features": [...], "columns": [...], "rows": [...]}``
        with timestamps in ISO 8601 and missing values ``null``."""
        import pandas as pd

        if not isinstance(entities, Sequence) or not entities:
            raise ValidationError(
                "entities must be a non-empty list of rows", details={"field": "entities"}
            )
        if len(entities) > MAX_TRAINING_ROWS:
            msg = f"entities: {len(entities):,} rows; at most {MAX_TRAINING_ROWS:,} per request"
            raise ValidationError(msg, details={"field": "entities"})
        d.check_name(timestamp_column, field="timestamp_column")
        records = []
        for index, row in enumerate(entities):
            if not isinstance(row, Mapping):
                raise ValidationError(
                    f"entities[{index}] must be an object", details={"field": f"entities[{index}]"}
                )
            if timestamp_column not in row:
                msg = f"entities[{index}] has no {timestamp_column!r} (the row's event time)"
                raise ValidationError(
                    msg, details={"field": f"entities[{index}].{timestamp_column}"}
                )
            stamp = row[timestamp_column]
            if isinstance(stamp, str):
                try:
                    stamp = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
                except ValueError:
                    stamp = None
            if not isinstance(stamp, datetime):
                msg = f"entities[{index}].{timestamp_column} must be an ISO 8601 time"
                raise ValidationError(
                    msg, details={"field": f"entities[{index}].{timestamp_column}"}
                )
            records.append({**row, timestamp_column: v.as_utc(stamp, field=timestamp_column)})
        frame = pd.DataFrame.from_records(records)
        frame[timestamp_column] = pd.to_datetime(frame[timestamp_column], utc=True)
        result = self.get_historical_features(
            frame,
            features,
            timestamp_column=timestamp_column,
            can_read_pii=can_read_pii,
            actor=actor,
        )
        columns = [str(c) for c in result.columns]
        rows = [
            {c: _json_value(val) for c, val in zip(columns, values, strict=True)}
            for values in result.itertuples(index=False, name=None)
        ]
        names = [c for c in columns if c not in frame.columns]
        return {"features": names, "columns": columns, "rows": rows}

    def push(self, view: str, rows: Sequence[Mapping[str, Any]], *, actor: Principal) -> View:
        """Append rows to a push-source view: offline (the history training sets see) and,
        for an online view, to the online store. Every row is checked first: a row with a
        missing or unknown column or a value of the wrong type refuses the whole push
        (nothing written). A row: join keys, the source's timestamp field (ISO 8601), the
        created-timestamp field if the source has one (optional), every feature."""
        spec = self.view_spec(view)
        if not isinstance(spec, FeatureViewSpec) or spec.source.kind != "push":
            kind = "on-demand" if isinstance(spec, OnDemandViewSpec) else spec.source.kind
            msg = f"view {view!r} has a {kind} source; only views with a push source take pushes"
            raise ValidationError(msg, details={"field": "view", "source": kind})
        checked = _check_push_rows(spec, rows)
        from mlrig.contracts.online_store import OnlineRow
        from mlrig.features import offline
        from mlrig.features.online import encode_key

        # the online store first: its writes are idempotent (newest wins), so when it fails
        # no offline row is stored yet and a retry duplicates nothing; the offline rows
        # (one transaction) last
        online = 0
        if spec.online:
            ts, created = spec.source.timestamp_field, spec.source.created_timestamp_field
            online = self.platform.online_store.write(
                spec.name,
                [
                    OnlineRow(
                        key=encode_key([r[k] for k in spec.join_keys]),
                        values={f.name: r.get(f.name) for f in spec.features},
                        event_timestamp=r[ts],
                        created_timestamp=r.get(created) if created else None,
                    )
                    for r in checked
                ],
                ttl_seconds=spec.ttl_seconds,
            )
        written = offline.append_push(self.platform, spec, checked)
        return {"view": spec.name, "rows": len(checked), "offline": written, "online": online}

    def materialize(
        self,
        view: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        actor: Principal,
        wait: bool = False,
        timeout: float = 3600.0,
    ) -> View:
        """Queue a ``features-materialize`` experiment loading ``[start, end)`` of the view
        into the online store (``start`` default: the view's watermark; ``end``: now at
        run time). Returns the experiment (its final state with ``wait``)."""
        spec = self.view_spec(view)
        if not isinstance(spec, FeatureViewSpec):
            msg = (
                f"view {view!r} is an on-demand view: it is computed at read time, not materialised"
            )
            raise ValidationError(msg, details={"field": "view"})
        if not spec.online:
            msg = f"view {view!r} has online = false: there is nothing to materialise"
            raise ValidationError(msg, details={"field": "view"})
        start = v.as_utc(start, field="start") if start is not None else None
        end = v.as_utc(end, field="end") if end is not None else None
        if start is not None and end is not None and end <= start:
            msg = f"end ({end.isoformat()}) must be after start ({start.isoformat()})"
            raise ValidationError(msg, details={"field": "end"})
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        experiment = self.platform.experiments.create(
            name=f"materialize-{spec.name}-{stamp}-{uuid.uuid4().hex[:6]}",
            trainer="features-materialize",
            actor=actor,
            description=f"materialise feature view {spec.name}",
            hyperparameters={"view": spec.name, "start": iso(start), "end": iso(end)},
            max_attempts=3,
            checkpoint_interval_s=0,
            start=True,
        )
        if not wait:
            return experiment
        deadline = time.monotonic() + timeout
        while experiment["status"] not in _ENDED and time.monotonic() < deadline:
            time.sleep(0.5)
            experiment = self.platform.experiments.get(experiment["id"])
        return experiment

    def statistics(self, view: str, *, can_read_pii: bool = True) -> View:
        """The latest statistics of each feature of ``view`` (written by materialisation).
        For PII features and a reader without the right, only count and nulls."""
        spec = self.view_spec(view)
        pii = {f.name for f in spec.features if f.pii}
        with self.db.session() as session:
            rows = session.scalars(
                select(FeatureStatistics)
                .where(FeatureStatistics.view_name == spec.name)
                .order_by(FeatureStatistics.computed_at.desc())
            )
            latest: dict[str, FeatureStatistics] = {}
            for row in rows:
                latest.setdefault(row.feature_name, row)
            out = []
            for feature in spec.features:
                row = latest.get(feature.name)
                if row is None:
                    continue
                stats = dict(row.stats or {})
                if feature.name in pii and not can_read_pii:
                    stats = {k: stats[k] for k in ("count", "nulls") if k in stats} | {
                        "masked": True
                    }
                out.append(
                    {
                        "feature": feature.name,
                        "computed_at": iso(row.computed_at),
                        "job_id": str(row.job_id) if row.job_id else None,
                        "window_start": iso(row.window_start),
                        "window_end": iso(row.window_end),
                        "stats": stats,
                    }
                )
        return {"view": spec.name, "features": out}

    def count_features(self) -> int:
        with self.db.session() as session:
            return int(session.scalar(select(func.count()).select_from(FeatureDefinition)) or 0)


# --- helpers --------------------------------------------------------------------------------


def spec_kind(spec: AnyView) -> str:
    return "on_demand" if isinstance(spec, OnDemandViewSpec) else "batch"


def _taken(what: str, name: str) -> ConflictError:
    article = "an" if what[0] in "aeiou" else "a"
    msg = f"{article} {what} named {name!r} exists; pick another name"
    return ConflictError(msg, details={"name": name})


def _not_found(what: str, name: str) -> NotFoundError:
    msg = f"no {what} named {v.scrub(name)!r}"
    return NotFoundError(msg, details={"name": v.scrub(name)})


def _entity_view(row: FeatureEntity, creator: str | None) -> View:
    return {
        "name": row.name,
        "join_keys": list(row.join_keys or []),
        "description": row.description or "",
        "created_by": creator,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _feature_spec(row: FeatureDefinition) -> FeatureSpec:
    return FeatureSpec(
        name=row.name,
        dtype=row.feature_type,  # type: ignore[arg-type]
        expression=row.transformation_logic,
        description=row.description or "",
        tags=tuple(row.tags or ()),
    )


def _feature_view(
    row: FeatureDefinition, view: FeatureView | None, join_keys: list[str], creator: str | None
) -> View:
    return {
        "name": row.name,
        "view": view.name if view is not None else None,
        "type": row.feature_type,
        "expression": row.transformation_logic,
        "description": row.description or "",
        "tags": list(row.tags or []),
        "pii": bool(row.pii),
        "entities": list(view.entities or []) if view is not None else [],
        "join_keys": join_keys,
        "data_source": row.data_source,
        "version": row.version,
        "created_by": creator,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def _fill_view(row: FeatureView, spec: AnyView) -> None:
    row.name = spec.name
    row.tags = list(spec.tags)
    row.description = spec.description or None
    if isinstance(spec, OnDemandViewSpec):
        row.kind = "on_demand"
        row.entities = []
        row.source = None
        row.ttl_seconds = None
        row.online = False
        row.function = spec.function
        row.inputs = list(spec.inputs)
        row.request_fields = dict(spec.request_fields)
    else:
        row.kind = "batch"
        row.entities = [e.name for e in spec.entities]
        row.source = d.source_dict(spec.source)
        row.ttl_seconds = spec.ttl_seconds
        row.online = spec.online
        row.function = None
        row.inputs = []
        row.request_fields = {}


def _view_fields(row: FeatureView) -> tuple[Any, ...]:
    return (
        row.tags,
        row.description,
        row.entities,
        row.source,
        row.ttl_seconds,
        row.online,
        row.function,
        row.inputs,
        row.request_fields,
    )


def _definition_body(view: View) -> dict[str, Any]:
    """A view (as returned) as the body that would define it."""
    body: dict[str, Any] = {
        "name": view["name"],
        "kind": view["kind"],
        "tags": view["tags"],
        "description": view["description"],
        "features": [
            {
                "name": f["name"],
                "type": f["type"],
                "expression": f["expression"],
                "description": f["description"],
                "tags": f["tags"],
            }
            for f in view["features"]
        ],
    }
    if view["kind"] == "on_demand":
        body |= {
            "function": view["function"],
            "inputs": view["inputs"],
            "request_fields": view["request_fields"],
        }
    else:
        source = {k: val for k, val in (view["source"] or {}).items() if val is not None}
        body |= {
            "entities": view["entities"],
            "source": source,
            "ttl_seconds": view["ttl_seconds"],
            "online": view["online"],
        }
    return body


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    body["features"] = [
        {k: val for k, val in f.items() if val is not None} for f in body["features"]
    ]
    return body


def _check_function(path: str) -> None:
    import importlib

    from mlrig.features.ondemand import check_function_safety, load_function

    check_function_safety(path)  # before importing anything
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error there is theirs to fix
        reason = f"{type(exc).__name__}: {exc}"
        msg = f"function {path!r}: module {module_name!r} cannot be imported ({reason})"
        raise ValidationError(v.scrub(msg[:1000]), details={"field": "function"}) from None
    target = getattr(module, attribute, None)
    if not callable(target):
        msg = f"function {path!r}: {module_name!r} has no function {attribute!r}"
        raise ValidationError(msg, details={"field": "function"})
    try:
        load_function(path)  # the loader's own rules (a plain function of the user's module)
    except ValidationError as exc:
        exc.details.setdefault("field", "function")
        raise


def _check_rights(spec: AnyView, old: Mapping[str, FeatureSpec], actor: Principal) -> None:
    """An on-demand view runs its function on the server for every reader, a SQL source
    runs its query with the platform's database role: defining either needs the admin
    permission. Untagging a PII feature (or removing it) shows its values
    to everyone: that needs the read_pii permission."""
    from mlrig.errors import PermissionDeniedError
    from mlrig.security.roles import Permission

    if isinstance(spec, OnDemandViewSpec) and not actor.can(Permission.ADMIN):
        msg = (
            f"defining the on-demand view {spec.name!r} runs its function on the server: "
            "it needs the admin permission"
        )
        raise PermissionDeniedError(msg, details={"permission": Permission.ADMIN.value})
    if (
        isinstance(spec, FeatureViewSpec)
        and spec.source.kind == "sql"
        and not actor.can(Permission.ADMIN)
    ):
        msg = (
            f"defining the view {spec.name!r} over a SQL query runs that query with the "
            "platform's own database role: it needs the admin permission"
        )
        raise PermissionDeniedError(msg, details={"permission": Permission.ADMIN.value})
    new = {f.name: f for f in spec.features}
    untagged = [n for n, f in old.items() if f.pii and (n not in new or not new[n].pii)]
    if untagged and not actor.can(Permission.READ_PII):
        msg = (
            f"removing the pii tag of {', '.join(untagged)} (or the feature) needs the "
            "read_pii permission (role deployer or higher)"
        )
        raise PermissionDeniedError(msg, details={"permission": Permission.READ_PII.value})


def _reads(feature: FeatureSpec, columns: set[str]) -> bool:
    return not feature.pii and d.reads_pii(d.column_refs(feature.expression, feature.name), columns)


def _tag_pii(feature: FeatureSpec) -> FeatureSpec:
    return dataclasses.replace(feature, tags=(*feature.tags, PII_TAG))


def _with_note(definition: dict[str, Any], spec: AnyView | None, name: str) -> dict[str, Any]:
    """The history's definition, saying why a feature was tagged ``pii`` by the store."""
    derived = (getattr(spec, "extra", None) or {}).get("pii_derived") or {}
    if name in derived:
        definition = dict(definition)
        definition["pii_derived"] = (
            f"tagged pii: reads column(s) {', '.join(derived[name])} that a pii feature "
            "over the same source reads"
        )
    return definition


def _is_pii(spec: AnyView, name: str) -> bool:
    return any(f.pii for f in spec.features if f.name == name)


def _refs(features: object) -> list[str]:
    """``features`` deduplicated; each reference is checked where resolve() first sees
    it (a cached list was checked then), the list's shape here."""
    if (
        isinstance(features, (list, tuple))
        and 0 < len(features) <= 1000
        and all(type(r) is str for r in features)
    ):
        return list(dict.fromkeys(features))
    return d.check_refs(features)


def _check_local_file(spec: FeatureViewSpec) -> None:
    from pathlib import Path

    uri = spec.source.uri
    if spec.source.kind == "file" and uri and "://" not in uri and not Path(uri).exists():
        msg = f"source.uri {uri!r}: no such file"
        raise ValidationError(msg, details={"field": "source.uri"})


def _check_key_value(value: Any, field: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        msg = f"{field} must be an integer or a string, got {type(value).__name__}"
        raise ValidationError(msg, details={"field": field})
    if isinstance(value, int):
        return v.check_int(value, field=field)
    return v.check_text(value, field=field, max_length=1000)


def _check_entity_rows(rows: object, limit: int) -> list[dict[str, Any]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        msg = "entities must be a non-empty list of objects of join key -> value"
        raise ValidationError(msg, details={"field": "entities"})
    if len(rows) > limit:
        msg = (
            f"entities: {len(rows):,} rows; at most {limit:,} per request "
            "([features] max_entities_per_request)"
        )
        raise ValidationError(msg, details={"field": "entities", "limit": limit})
    out = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping) or not row:
            msg = f"entities[{index}] must be an object of join key -> value"
            raise ValidationError(msg, details={"field": f"entities[{index}]"})
        out.append(
            {str(k): _check_key_value(val, f"entities[{index}].{k}") for k, val in row.items()}
        )
    return out


def _type_ok(dtype: str, value: Any) -> bool:
    if value is None:
        return True
    if dtype == "numerical":
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not isinstance(value, float) or math.isfinite(value))
            and (not isinstance(value, int) or v.INT64_MIN <= value <= v.INT64_MAX)
        )
    if dtype == "boolean":
        return isinstance(value, bool)
    if dtype == "categorical":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    return isinstance(value, str)


def _parse_time(value: Any, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            msg = f"{field} must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"
            raise ValidationError(msg, details={"field": field}) from None
    return v.as_utc(value, field=field)


def _check_push_rows(spec: FeatureViewSpec, rows: object) -> list[dict[str, Any]]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence) or not rows:
        raise ValidationError("rows must be a non-empty list of objects", details={"field": "rows"})
    if len(rows) > MAX_PUSH_ROWS:
        msg = f"rows: {len(rows):,} rows; at most {MAX_PUSH_ROWS:,} per push"
        raise ValidationError(msg, details={"field": "rows"})
    ts, created = spec.source.timestamp_field, spec.source.created_timestamp_field
    features = {f.name: f for f in spec.features}
    allowed = [*spec.join_keys, ts, *([created] if created else []), *features]
    out = []
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, Mapping):
            raise ValidationError(f"{where} must be an object", details={"field": where})
        unknown = [str(k) for k in row if k not in allowed]
        if unknown:
            shown = v.scrub(unknown[0])
            msg = f"{where}: unknown column {shown!r}; view {spec.name!r} has {', '.join(allowed)}"
            raise ValidationError(
                msg, details={"field": f"{where}.{v.scrub(unknown[0])}", "allowed": allowed}
            )
        missing = [k for k in (*spec.join_keys, ts, *features) if k not in row]
        if missing:
            msg = f"{where}: missing column {missing[0]!r} (every row needs {', '.join(allowed)})"
            raise ValidationError(
                msg, details={"field": f"{where}.{missing[0]}", "missing": missing}
            )
        checked: dict[str, Any] = {}
        for key in spec.join_keys:
            checked[key] = _check_key_value(row[key], f"{where}.{key}")
        checked[ts] = _parse_time(row[ts], f"{where}.{ts}")
        if created and row.get(created) is not None:
            checked[created] = _parse_time(row[created], f"{where}.{created}")
        for name, feature in features.items():
            value = row[name]
            if not _type_ok(feature.dtype, value):
                msg = (
                    f"{where}.{name}: {value!r:.80} is not a {feature.dtype} value "
                    f"({_TYPE_HELP[feature.dtype]})"
                )
                raise ValidationError(
                    msg, details={"field": f"{where}.{name}", "type": feature.dtype}
                )
            if isinstance(value, str):
                v.check_text(value, field=f"{where}.{name}", max_length=v.MAX_TAG_VALUE_LENGTH)
            checked[name] = value
        out.append(checked)
    return out


_TYPE_HELP = {
    "numerical": "a finite number",
    "categorical": "a string or an integer",
    "boolean": "true or false",
    "text": "a string",
}


def _json_value(value: Any) -> Any:
    """A DataFrame cell as JSON: NaN/NaT -> None, timestamps -> ISO 8601, numpy -> Python."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "isoformat"):
        try:
            import pandas as pd

            if pd.isna(value):
                return None
        except (ImportError, TypeError, ValueError):
            pass
        return value.isoformat()
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        import pandas as pd

        if not isinstance(value, (list, dict, str)) and pd.isna(value):
            return None
    except (ImportError, TypeError, ValueError):
        pass
    return value
