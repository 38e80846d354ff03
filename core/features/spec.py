"""The plain, validated definitions the feature store's parts work on.

The service turns stored rows into these; the offline store, materialisation and the
online read path take only these, so each can be used (and tested) without a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: the spec's ``feature_definitions.feature_type`` values
FEATURE_TYPES = ("numerical", "categorical", "boolean", "text")
FeatureType = Literal["numerical", "categorical", "boolean", "text"]
SourceKind = Literal["file", "sql", "push"]
#: the tag that marks a feature as personal data (masked for readers without the right)
PII_TAG = "pii"


@dataclass(frozen=True)
class EntitySpec:
    """A thing features describe (a customer, a driver), keyed by one or more columns."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class SourceSpec:
    """Where a view's rows come from.

    - ``file``: ``uri`` (a path or fsspec URL, ``s3://`` through the storage settings),
      ``format`` ``parquet`` or ``csv``;
    - ``sql``: ``query``, a ``SELECT`` on the platform database;
    - ``push``: rows pushed through the API (kept by the feature store itself).

    Every source has an event-timestamp column and optionally a created-timestamp column
    (a later created timestamp is a correction of the same event).
    """

    kind: SourceKind
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    uri: str | None = None
    format: Literal["parquet", "csv"] | None = None
    query: str | None = None


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of a view: its name (unique across the store), type and how it is
    computed from the source row (``expression``: a DuckDB SQL expression over the
    source's columns; default: the column of the feature's name)."""

    name: str
    dtype: FeatureType
    expression: str | None = None
    description: str = ""
    tags: tuple[str, ...] = ()

    @property
    def pii(self) -> bool:
        return PII_TAG in self.tags

    @property
    def sql(self) -> str:
        """The SQL that computes the feature from a source row."""
        return self.expression or _quote(self.name)


@dataclass(frozen=True)
class FeatureViewSpec:
    """A group of features over one source, for one or more entities.

    ``ttl_seconds``: how long a value stays valid after its event time (``None``: for
    ever); the offline store never joins a value older than the TTL, the online store
    returns it as missing.
    """

    name: str
    entities: tuple[EntitySpec, ...]
    source: SourceSpec
    features: tuple[FeatureSpec, ...]
    ttl_seconds: int | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    online: bool = True
    version: int = 1
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def join_keys(self) -> tuple[str, ...]:
        """Every entity's join keys, in order (the online store's key columns)."""
        return tuple(k for e in self.entities for k in e.join_keys)

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class OnDemandViewSpec:
    """Features computed at read time by a registered Python function.

    ``function`` is an import string (``package.module:function``) importable on the
    server and workers; it gets a pandas DataFrame holding the ``inputs`` features (by
    name) and the ``request_fields`` (values sent with the request) and returns a
    DataFrame with one column per feature of :attr:`features`. Applied the same way to
    training sets and to online reads, so both see the same values.
    """

    name: str
    function: str
    inputs: tuple[str, ...]
    features: tuple[FeatureSpec, ...]
    request_fields: dict[str, FeatureType] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ()
    version: int = 1
