"""A cache's options, checked once, and what follows from them: keys, rows, filters.

:class:`Settings` is built by ``SQLCache.__init__`` from its keyword arguments; every rule
an option must meet is here, and so is every use of them that needs no database: an entry's
key, the rows an update writes, the filter a ``clear()`` or an export applies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel

from langchain_sqlcache.codec import encode_entry, entry_key, escape_text, model_allowlist
from langchain_sqlcache.errors import ConfigurationError, checked_identifier
from langchain_sqlcache.models import NAMESPACE_MAX_LENGTH

DEFAULT_BATCH_SIZE = 1000
DEFAULT_PRUNE_EVERY = 100
CLEAR_FILTERS = ("llm_string", "older_than", "expired_only")


@dataclass(frozen=True)
class EntryFilter:
    """Which entries ``clear()``, an export or a count touch, with the values they compare.

    A field left None does not restrict: no field at all is every entry of every namespace.
    Text is held as stored (escaped, see ``codec.escape_text``).
    """

    namespace: str | None = None
    """The entries' namespace."""
    llm_string: str | None = None
    """Only this llm_string's entries."""
    cutoff: datetime | None = None
    """Only entries last written before this instant."""
    now: datetime | None = None
    """Only entries expired by this instant."""

    def params(self) -> dict[str, Any]:
        """The statements' bind parameters: those of the fields that restrict."""
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Settings:
    """The options of one cache, each checked (see ``SQLCache`` for what they mean)."""

    namespace: str = ""
    schema: str | None = None
    create_tables: bool = True
    ttl: timedelta | None = None
    max_entries: int | None = None
    max_bytes: int | None = None
    record_hits: bool = False
    prune_every: int | None = DEFAULT_PRUNE_EVERY
    batch_size: int = DEFAULT_BATCH_SIZE
    on_error: Literal["warn", "raise"] = "warn"
    key_secret: bytes | None = None
    models: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    """The pydantic classes whose instances come back as instances (by qualified name)."""
    stored_namespace: str = field(init=False)
    """The namespace as its column holds it (escaped)."""
    _writes: Iterator[int] = field(init=False, repr=False, compare=False)

    @classmethod
    def of(
        cls,
        *,
        namespace: object = "",
        schema: str | None = None,
        create_tables: bool = True,
        ttl: timedelta | float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        record_hits: bool = False,
        prune_every: int | None = DEFAULT_PRUNE_EVERY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_error: str = "warn",
        key_secret: str | bytes | None = None,
        pydantic_classes: Iterable[type[BaseModel]] = (),
    ) -> Settings:
        """Check each option; raise ConfigurationError naming the first that is wrong."""
        if on_error not in ("warn", "raise"):
            msg = f"on_error must be 'warn' or 'raise', not {on_error!r}"
            raise ConfigurationError(msg)
        return cls(
            namespace=checked_namespace(namespace),
            schema=checked_identifier(schema),
            create_tables=create_tables,
            ttl=_positive_duration(ttl),
            max_entries=_positive("max_entries", max_entries),
            max_bytes=_positive("max_bytes", max_bytes),
            record_hits=record_hits,
            prune_every=_positive("prune_every", prune_every),
            batch_size=_positive("batch_size", batch_size) or DEFAULT_BATCH_SIZE,
            on_error="raise" if on_error == "raise" else "warn",
            key_secret=key_secret.encode() if isinstance(key_secret, str) else key_secret,
            models=model_allowlist(pydantic_classes),
        )

    def __post_init__(self) -> None:
        """Derive what every operation would otherwise recompute."""
        object.__setattr__(self, "stored_namespace", escape_text(self.namespace))
        object.__setattr__(self, "_writes", itertools.count(1))

    def key_hash(self, prompt: str, llm_string: str) -> str:
        """The key of an entry of this cache's namespace (see ``codec.entry_key``)."""
        return entry_key(self.namespace, prompt, llm_string, self.key_secret)

    def rows(
        self, prompt: str, llm_string: str, return_val: Sequence[Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The entry row and generation rows an update writes, stamped now."""
        now = utc_now()
        return encode_entry(
            self.namespace,
            prompt,
            llm_string,
            return_val,
            created_at=now,
            updated_at=now,
            expires_at=now + self.ttl if self.ttl else None,
            secret=self.key_secret,
            models=self.models,
        )

    def prune_due(self) -> bool:
        """Whether this update is the one in ``prune_every`` that runs a pruning batch."""
        return self.prune_every is not None and next(self._writes) % self.prune_every == 0

    def entry_filter(self, *, all_namespaces: bool = False, **kwargs: Any) -> EntryFilter:
        """The filter of ``clear(**kwargs)``: this namespace (or all), narrowed by kwargs.

        Raises:
            TypeError: An unknown keyword argument, or a value of the wrong type.

        """
        unknown = sorted(set(kwargs) - set(CLEAR_FILTERS))
        if unknown:
            msg = (
                f"clear() got unexpected keyword arguments: {', '.join(unknown)} "
                f"(it takes {', '.join(CLEAR_FILTERS)})"
            )
            raise TypeError(msg)
        llm_string = kwargs.get("llm_string")
        older_than = kwargs.get("older_than")
        cutoff: datetime | None = None
        if isinstance(older_than, timedelta):
            cutoff = utc_now() - older_than
        elif isinstance(older_than, datetime):
            if older_than.tzinfo is None:
                msg = "older_than must be an aware datetime (or a timedelta)"
                raise TypeError(msg)
            cutoff = older_than
        elif older_than is not None:
            msg = f"older_than must be a datetime or a timedelta, not {type(older_than).__name__}"
            raise TypeError(msg)
        return EntryFilter(
            namespace=None if all_namespaces else self.stored_namespace,
            llm_string=escape_text(llm_string) if llm_string is not None else None,
            cutoff=cutoff,
            now=utc_now() if kwargs.get("expired_only") else None,
        )


def utc_now() -> datetime:
    """The current instant, aware, in UTC."""
    return datetime.now(timezone.utc)


def checked_namespace(namespace: object) -> str:
    """Return ``namespace`` if the cache can keep it apart from every other; else raise.

    The one set of rules for a namespace, wherever it comes from (the constructor, a line
    that ``import`` reads).

    Raises:
        ConfigurationError: Not a string, longer than its column once stored, or ending
            with a space.

    """
    if not isinstance(namespace, str) or len(escape_text(namespace)) > NAMESPACE_MAX_LENGTH:
        msg = f"namespace must be a string of at most {NAMESPACE_MAX_LENGTH} characters"
        raise ConfigurationError(msg)
    if namespace.endswith(" "):
        # MySQL's collations ignore trailing spaces, so "a " would share entries with "a".
        msg = f"namespace must not end with a space: {namespace!r}"
        raise ConfigurationError(msg)
    return namespace


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value <= 0):
        msg = f"{name} must be a positive integer or None, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _positive_duration(ttl: timedelta | float | None) -> timedelta | None:
    if ttl is None:
        return None
    duration = ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl)
    if duration <= timedelta(0):
        msg = f"ttl must be positive, not {ttl!r}"
        raise ConfigurationError(msg)
    return duration
