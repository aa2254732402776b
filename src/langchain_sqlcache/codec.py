r"""Generations to row values and back, exactly, and the key that finds an entry.

Rows are untrusted input: anyone who can write the tables can plant one. Decoding therefore
rebuilds only an explicit allowlist of generation and message classes from plain data (no
``langchain_core.load``, no import paths, no secrets), and a row that does not decode is a miss
with a logged warning.

What is stored how
------------------

A value comes back exactly (``==``, the same types, and the same ``langchain_core.load.dumps``)
or is not stored at all. ``generation_info`` and a chat message's fields (``content`` left out
when it equals the generation's text) are JSON documents:

* Plain JSON stays plain, so that analysts can query it in SQL: ``str``, ``int``, ``float``,
  ``bool``, ``None``, ``list`` and ``dict`` with string keys, of exactly these types (not
  subclasses), in their order, numbers as Python writes them (``-0.0`` included).
* Every other value the cache accepts is a *tagged* object, whose only key is the escape
  marker ``"\ufdd0"`` and whose value is ``[tag, ...]``::

      tuple       ["tuple", [items]]          datetime   ["datetime", iso, tz, fold]
      set         ["set", [items]]            date       ["date", iso]
      frozenset   ["frozenset", [items]]      time       ["time", iso, tz, fold]
      dict        ["dict", [[key, value]...]] timedelta  ["timedelta", days, secs, micros]
                  (any key not a str)         UUID       ["uuid", "8-4-4-4-12"]
      bytes       ["bytes", base64]           Decimal    ["decimal", str(d)] (sign, exponent,
      bytearray   ["bytearray", base64]                  NaN kept)
      float       ["float", "nan"|"inf"|"-inf"]
      int         ["int", hex] (beyond 2000 bits: str() and JSON parsers refuse long ints)
      subtree     ["json", text] (nested beyond 24 levels: MariaDB refuses 32)
      pydantic    ["model", "module:qualname", {field: value}] (allowlisted classes only)

  Sets keep their iteration order (so their repr and LangChain's dumps) where a set of up
  to 6 elements can be rebuilt in it; a set whose hash table grew and shrank may come back
  ``==`` but iterating in another order.
  ``tz`` is null (naive), ``["timezone", offset_microseconds, name_or_null]`` for
  ``datetime.timezone``, ``["zoneinfo", key]``, or ``["pydantic", offset_seconds]`` for the
  ``pydantic_core.TzInfo`` that pydantic gives a parsed "...Z" or "+02:00" (what structured
  output holds); other tzinfo classes are refused.
  Ordinary data never produces such an object: a string that starts with the marker is
  escaped (below), so the bare marker is never a key of user data.
* Pydantic model instances (``with_structured_output`` puts one in
  ``additional_kwargs["parsed"]``) come back as instances of the classes given to
  ``SQLCache(pydantic_classes=...)``, found by module and qualified name in that allowlist
  only (a name read from a row is never imported) and rebuilt with ``model_validate`` of
  their field values; an instance of any other class is stored as its ``model_dump()`` and
  comes back as that plain data. A row naming a class this cache does not allow comes back
  as its fields, a dict.
* Anything else (an Enum, ``IntEnum`` and ``StrEnum`` included, a ``str``/``dict``
  subclass, a dataclass, a model with private attributes set, another tzinfo) raises
  :class:`~langchain_sqlcache.errors.UnstorableValueError` naming its path and type, e.g.
  ``return_val[0].message.additional_kwargs['x']``: the update is refused as a whole.

Strings (in the text columns and in JSON) that Postgres or a driver cannot carry (NUL, lone
surrogates) or that start with the marker are stored as the marker, ``u``, and their Python
``unicode_escape`` form, which keeps every code point apart (a surrogate pair stays two code
points). Rows written before this form (the marker and a JSON string) still decode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    ChatMessageChunk,
    FunctionMessage,
    FunctionMessageChunk,
    HumanMessage,
    HumanMessageChunk,
    SystemMessage,
    SystemMessageChunk,
    ToolMessage,
    ToolMessageChunk,
)
from langchain_core.outputs import (
    ChatGeneration,
    ChatGenerationChunk,
    Generation,
    GenerationChunk,
)
from pydantic import BaseModel, RootModel
from pydantic_core import TzInfo

from langchain_sqlcache.errors import ConfigurationError, UnstorableValueError

logger = logging.getLogger("langchain_sqlcache")

KEY_FORMAT_VERSION = b"langchain-sqlcache/key/v1"

GENERATION_CLASSES: dict[str, type[Generation]] = {
    cls.__name__: cls for cls in (Generation, GenerationChunk, ChatGeneration, ChatGenerationChunk)
}

# Keyed by each class's own ``type`` field ("ai", "AIMessageChunk", ...), which the dumped
# message carries, so the stored JSON names its class without any import path.
MESSAGE_CLASSES: dict[str, type[BaseMessage]] = {
    cls.model_fields["type"].default: cls
    for cls in (
        AIMessage,
        AIMessageChunk,
        HumanMessage,
        HumanMessageChunk,
        SystemMessage,
        SystemMessageChunk,
        ChatMessage,
        ChatMessageChunk,
        ToolMessage,
        ToolMessageChunk,
        FunctionMessage,
        FunctionMessageChunk,
    )
}

# Postgres text and jsonb reject NUL, and no driver can send a lone surrogate. A string with
# either is stored escaped: this marker, ESCAPE_FORM, and its ASCII unicode_escape form. The
# marker is a Unicode noncharacter, so ordinary text never starts with it; a string that does
# is escaped too, which keeps the scheme reversible for every Python string, and leaves the
# bare marker free to be the key of tagged values.
ESCAPE_MARKER = "\ufdd0"
ESCAPE_FORM = "u"
# Rows written before ESCAPE_FORM: the marker and a JSON string (which joins a surrogate
# pair into one character, hence the new form).
LEGACY_ESCAPE_FORM = '"'

# Containers nested deeper than this are stored as JSON text (the "json" tag): MariaDB's
# JSON_VALID refuses documents nested 32 levels deep, and tags add up to a few levels.
MAX_JSON_DEPTH = 24
# Ints beyond this are tagged (hex): CPython refuses to convert an int of more than
# sys.get_int_max_str_digits() digits (640 at the lowest setting, 4300 by default).
MAX_PLAIN_INT_BITS = 2000
# The token-count columns are BIGINT: a count outside it (or not an int) stores NULL there,
# while the message keeps the exact value.
BIGINT_RANGE = range(-(2**63), 2**63)

ModelAllowlist = Mapping[str, type[BaseModel]]
NO_MODELS: ModelAllowlist = {}


def entry_key(namespace: str, prompt: str, llm_string: str, secret: bytes | None = None) -> str:
    """Return the hex SHA-256 (or HMAC-SHA-256 with ``secret``) that identifies an entry.

    Each part is length-prefixed, so ("ab", "c") and ("a", "bc") never share a key, and the
    format version is hashed first, so a future encoding cannot collide with this one. With
    a secret, someone who can read the table cannot confirm a guessed prompt by hashing it.
    """
    digest = (
        hmac.new(secret, KEY_FORMAT_VERSION, hashlib.sha256)
        if secret is not None
        else hashlib.sha256(KEY_FORMAT_VERSION)
    )
    for part in (namespace, key_prompt(prompt), llm_string):
        data = part.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


# langchain-core (0.3.73 and later) adds ``"total_cost": 0`` to the usage_metadata of every
# message a cache returns, and keys a chat call on ``dumps`` of all its messages, earlier
# answers included. An agent replaying a conversation from the cache sends its second turn
# with the first answer so marked, which the original run never did: the key differs and
# every later turn misses (langchain-ai/langchain#35308). The mark never reaches the
# provider, so the key leaves it out.
HIT_MARK = '"total_cost": 0'


def key_prompt(prompt: str) -> str:
    """Return ``prompt`` as the key hashes it: without the mark langchain-core puts on hits.

    A chat prompt is ``dumps`` of a message list; each message whose ``usage_metadata``
    holds ``total_cost`` 0 (an int, as langchain-core sets it) loses that entry, and its
    ``usage_metadata`` too if nothing else is left. The rest is dumped again as
    ``json.dumps`` wrote it, so the result is the original turn's prompt byte for byte.
    Any other prompt, and one without the mark (the common case: one substring search),
    is returned unchanged.
    """
    if HIT_MARK not in prompt:
        return prompt
    try:
        messages = json.loads(prompt)
    except (ValueError, RecursionError):
        return prompt
    if not isinstance(messages, list):
        return prompt
    changed = False
    for message in messages:
        kwargs = message.get("kwargs") if isinstance(message, dict) else None
        if not isinstance(kwargs, dict) or not isinstance(kwargs.get("usage_metadata"), dict):
            continue
        usage = kwargs["usage_metadata"]
        cost = usage.get("total_cost")
        if type(cost) is int and cost == 0:
            del usage["total_cost"]
            if not usage:
                del kwargs["usage_metadata"]
            changed = True
    return json.dumps(messages) if changed else prompt


def model_allowlist(classes: Iterable[type[BaseModel]]) -> ModelAllowlist:
    """The pydantic classes to rebuild, by ``module:qualname``; checked once, at construction.

    Raises:
        ConfigurationError: an item is not a pydantic model class, or two share a name.

    """
    allowed: dict[str, type[BaseModel]] = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            msg = f"pydantic_classes must hold pydantic BaseModel subclasses, not {cls!r}"
            raise ConfigurationError(msg)
        name = _model_name(cls)
        if allowed.get(name, cls) is not cls:
            msg = f"pydantic_classes holds two classes named {name}"
            raise ConfigurationError(msg)
        allowed[name] = cls
    return allowed


def _model_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _needs_escape(value: str) -> bool:
    if "\x00" in value or value.startswith(ESCAPE_MARKER):
        return True
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def escape_text(value: str) -> str:
    """Return ``value`` in a form every backend stores verbatim (see ``ESCAPE_MARKER``)."""
    if _needs_escape(value):
        return ESCAPE_MARKER + ESCAPE_FORM + value.encode("unicode_escape").decode("ascii")
    return value


def unescape_text(value: str) -> str:
    """Invert :func:`escape_text` (and read the legacy form of earlier rows)."""
    if not value.startswith(ESCAPE_MARKER):
        return value
    form, body = value[1:2], value[2:]
    if form == ESCAPE_FORM:
        return body.encode("ascii").decode("unicode_escape")
    if form == LEGACY_ESCAPE_FORM:
        restored = json.loads(value[1:])
        if isinstance(restored, str):
            return restored
    msg = "escaped text in an unknown form"
    raise ValueError(msg)


def escape_json(value: Any) -> Any:
    """Apply :func:`escape_text` to every string (keys included) of a plain JSON document.

    For documents in the legacy export format (real strings, no tags).
    """
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, Mapping):
        return {escape_json(_json_key(key)): escape_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_json(item) for item in value]
    return value


def _json_key(key: object) -> str:
    if isinstance(key, str):
        return key
    msg = f"JSON object keys must be strings, got {type(key).__name__} {key!r}"
    raise TypeError(msg)


# -- encoding ----------------------------------------------------------------------------


class _Refused(Exception):
    """A value the encoder refuses, with its path collected while the stack unwinds."""

    def __init__(self, value: object, reason: str = "") -> None:
        super().__init__()
        self.value = value
        self.reason = reason
        self.path: list[tuple[str, Any]] = []
        """Innermost first: ("key", key), ("index", position), ("item", None), ("field", name)."""

    def where(self, root: str, *, fields: bool) -> str:
        """The path as Python would write it; with ``fields`` the root's keys are attributes."""
        parts = []
        for depth, (kind, key) in enumerate(reversed(self.path)):
            if kind == "field" or (fields and depth == 0 and kind == "key"):
                parts.append(f".{key}")
            elif kind == "item":
                parts.append(" (an item)")
            else:
                parts.append(f"[{key!r}]")
        return root + "".join(parts)


def _is_plain(value: Any, depth: int = 1) -> bool:
    """Whether ``value`` is JSON as it is: exact builtin types, finite floats, short ints.

    The fast path of an update: one walk with no allocation, after which json.dumps (and
    a scan of its text for strings to escape) is all that is left to do.
    """
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(value.bit_length() <= MAX_PLAIN_INT_BITS)
    if kind is float:
        return bool(value - value == 0.0)  # false for NaN and the infinities
    if depth > MAX_JSON_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _is_plain(item, depth + 1):
                return False
        return True
    if kind is list:
        return all(_is_plain(item, depth + 1) for item in value)
    return False


def _tag(*parts: Any) -> dict[str, Any]:
    return {ESCAPE_MARKER: list(parts)}


class _Encoder:
    """Turns a document into its stored form (tags and escaped strings); see the module doc."""

    def __init__(self, models: ModelAllowlist) -> None:
        self.models = models

    def encode(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return escape_text(value)
        if kind is bool or value is None:
            return value
        if kind is int:
            if value.bit_length() <= MAX_PLAIN_INT_BITS:
                return value
            return _tag("int", hex(value))
        if kind is float:
            if value - value == 0.0:
                return value
            return _tag("float", repr(value))
        if kind in (dict, list, tuple, set, frozenset) or isinstance(value, BaseModel):
            if depth > MAX_JSON_DEPTH:
                # A subtree as JSON text, its own depth counted from 1 again.
                return _tag("json", json.dumps(self.encode(value, 1)))
            return self._container(value, depth)
        scalar = _SCALARS.get(kind)
        if scalar is None:
            raise _Refused(value)
        return scalar(value)

    def _container(self, value: Any, depth: int) -> Any:
        # ``depth`` is where the container sits; a tag's object and list take two levels.
        kind = type(value)
        if kind is dict:
            return self._dict(value, depth)
        if kind is list:
            return self._items(value, depth + 1)
        if kind in (tuple, set, frozenset):
            return _tag(kind.__name__, self._items(value, depth + 3))
        return self._model(value, depth)

    def _items(self, value: Iterable[Any], item_depth: int) -> list[Any]:
        encoded = []
        position = 0
        try:
            for position, item in enumerate(value):  # noqa: B007 - read on failure
                encoded.append(self.encode(item, item_depth))
        except _Refused as refused:
            ordered = isinstance(value, (list, tuple))
            refused.path.append(("index", position) if ordered else ("item", None))
            raise
        return encoded

    def _dict(self, value: dict[Any, Any], depth: int) -> Any:
        key: Any = None
        try:
            if all(type(key) is str for key in value):
                encoded = {}
                for key, item in value.items():
                    encoded[escape_text(key)] = self.encode(item, depth + 1)
                return encoded
            # Keys that are not strings: pairs in order, each key encoded like a value.
            pairs = []
            for key, item in value.items():
                pairs.append([self.encode(key, depth + 3), self.encode(item, depth + 3)])
            return _tag("dict", pairs)
        except _Refused as refused:
            refused.path.append(("key", key))
            raise

    def _model(self, value: BaseModel, depth: int) -> Any:
        cls = type(value)
        name = _model_name(cls)
        if self.models.get(name) is not cls:
            # Not allowed to come back as an instance: stored as its plain data.
            try:
                data = value.model_dump()
            except Exception as exc:
                raise _Refused(value, f"model_dump() failed: {exc}") from exc
            return self.encode(data, depth)
        if value.__pydantic_private__:
            raise _Refused(value, "private attributes would not survive")
        fields = dict(value)
        field = ""
        try:
            encoded = {}
            for field, item in fields.items():
                encoded[escape_text(field)] = self.encode(item, depth + 3)
        except _Refused as refused:
            refused.path.append(("field", field))
            raise
        return _tag("model", name, encoded)


def _tz(zone: tzinfo | None) -> Any:
    if zone is None:
        return None
    if type(zone) is timezone:
        offset, *name = zone.__getinitargs__()  # type: ignore[attr-defined]
        return [
            "timezone",
            offset // timedelta(microseconds=1),
            escape_text(name[0]) if name else None,
        ]
    if type(zone) is ZoneInfo and zone.key is not None:
        return ["zoneinfo", escape_text(zone.key)]
    if type(zone) is TzInfo:
        # A fixed offset in whole seconds (its constructor's only argument).
        offset = zone.utcoffset(None)
        if offset is not None and offset % timedelta(seconds=1) == timedelta(0):
            return ["pydantic", offset // timedelta(seconds=1)]
    raise _Refused(zone, "only datetime.timezone and zoneinfo.ZoneInfo zones are kept")


def _encode_datetime(value: datetime) -> Any:
    return _tag("datetime", value.replace(tzinfo=None).isoformat(), _tz(value.tzinfo), value.fold)


def _encode_time(value: time) -> Any:
    return _tag("time", value.replace(tzinfo=None).isoformat(), _tz(value.tzinfo), value.fold)


def _encode_timedelta(value: timedelta) -> Any:
    return _tag("timedelta", value.days, value.seconds, value.microseconds)


_SCALARS: dict[type, Any] = {
    datetime: _encode_datetime,
    date: lambda value: _tag("date", value.isoformat()),
    time: _encode_time,
    timedelta: _encode_timedelta,
    UUID: lambda value: _tag("uuid", str(value)),
    Decimal: lambda value: _tag("decimal", str(value)),
    bytes: lambda value: _tag("bytes", base64.b64encode(value).decode("ascii")),
    bytearray: lambda value: _tag("bytearray", base64.b64encode(value).decode("ascii")),
}


# What json.dumps (ASCII escapes) writes for a NUL, the escape marker and any surrogate
# (lone, or half of a pair encoding a character beyond the BMP, such as an emoji).
NEEDS_ESCAPE_IN_JSON = re.compile(r"\\u(?:0000|fdd0|d[89a-f])")


def encode_document(
    value: Any, where: str, models: ModelAllowlist = NO_MODELS, *, fields: bool = False
) -> tuple[Any, int]:
    """Return a JSON document's stored form and its size as JSON text.

    Raises:
        UnstorableValueError: a value the cache cannot store and rebuild exactly, named by
            its path (``where`` and the keys down to it; with ``fields`` the document is an
            object's fields, written as attributes) and type.

    """
    if value is None:
        return None, 0
    try:
        if _is_plain(value):
            dumped = json.dumps(value)
            if not NEEDS_ESCAPE_IN_JSON.search(dumped):
                # Plain JSON with nothing to escape (no NUL, marker or surrogate): as it is.
                return value, len(dumped)
        encoded = _Encoder(models).encode(value, 1)
        return encoded, len(json.dumps(encoded))
    except _Refused as refused:
        path = refused.where(where, fields=fields)
        kind = type(refused.value)
        reason = f" ({refused.reason})" if refused.reason else ""
        msg = (
            f"{path} is a {kind.__module__}.{kind.__qualname__}, which the cache cannot store "
            f"and rebuild exactly{reason}"
        )
        raise UnstorableValueError(msg) from None
    except RecursionError as exc:
        msg = f"{where} is nested too deeply to store"
        raise UnstorableValueError(msg) from exc


# Where LangChain's llm_string names the model: "model_name": "gpt-4o" in the serialized
# model, ('model', 'llama3') in its sorted parameters, and the like.
MODEL_PATTERN = re.compile(
    r"""['"](?:model_name|model|model_id)['"]\s*[:,]\s*['"]([^'"]{1,255})['"]"""
)


def model_of(llm_string: str) -> str | None:
    """The model name that ``llm_string`` carries, if it carries one."""
    match = MODEL_PATTERN.search(llm_string)
    return match.group(1) if match else None


def utf8_size(value: str) -> int:
    """Bytes of ``value`` in UTF-8 (ASCII, the common case, without encoding it)."""
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def encode_generations(
    return_val: Sequence[Generation], models: ModelAllowlist = NO_MODELS
) -> tuple[list[dict[str, Any]], int]:
    """Turn a cache value into generation rows (without ``entry_id``) and their byte size.

    Raises:
        TypeError: ``return_val`` is not a sequence of the four generation classes, or holds
            a message class the cache does not rebuild.
        UnstorableValueError: a value inside cannot be stored and rebuilt exactly.

    """
    if isinstance(return_val, (str, bytes)) or not isinstance(return_val, Iterable):
        msg = f"return_val must be a sequence of Generation, got {type(return_val).__name__}"
        raise TypeError(msg)
    generations = list(return_val)
    # Every item is checked before any is encoded, so that a programming error (TypeError)
    # is never hidden behind a value the cache refuses (UnstorableValueError).
    for idx, generation in enumerate(generations):
        _check_classes(idx, generation)
    encoded = [
        _encode_generation(idx, generation, models) for idx, generation in enumerate(generations)
    ]
    return [row for row, _ in encoded], sum(size for _, size in encoded)


def _check_classes(idx: int, generation: object) -> None:
    generation_type = type(generation).__name__
    if GENERATION_CLASSES.get(generation_type) is not type(generation):
        kind = type(generation)
        msg = (
            f"return_val[{idx}] is a {kind.__module__}.{kind.__qualname__}"
            f", not one of {', '.join(GENERATION_CLASSES)}"
        )
        raise TypeError(msg)
    if isinstance(generation, ChatGeneration):
        message = generation.message
        if MESSAGE_CLASSES.get(message.type) is not type(message):
            msg = (
                f"return_val[{idx}].message is a {type(message).__qualname__}, which is not cached"
            )
            raise TypeError(msg)


def _encode_generation(
    idx: int, generation: Generation, models: ModelAllowlist
) -> tuple[dict[str, Any], int]:
    generation_info, info_size = encode_document(
        generation.generation_info, f"return_val[{idx}].generation_info", models
    )
    message: dict[str, Any] | None = None
    message_size = 0
    input_tokens = output_tokens = None
    if isinstance(generation, ChatGeneration):
        message, message_size = _encode_message(idx, generation.message, generation.text, models)
        usage = getattr(generation.message, "usage_metadata", None) or {}
        input_tokens = _token_count(usage.get("input_tokens"))
        output_tokens = _token_count(usage.get("output_tokens"))
    row = {
        "idx": idx,
        "generation_type": type(generation).__name__,
        "text": escape_text(generation.text),
        "generation_info": generation_info,
        "message": message,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    return row, utf8_size(generation.text) + info_size + message_size


def _token_count(value: Any) -> int | None:
    return value if type(value) is int and value in BIGINT_RANGE else None


def _encode_message(
    idx: int, message: BaseMessage, text: str, models: ModelAllowlist
) -> tuple[dict[str, Any], int]:
    # The fields as they are (and extra ones), not model_dump(), which would turn a
    # pydantic model in additional_kwargs into a dict.
    data = dict(message)
    # A string content is the generation's text (ChatGeneration derives text from it):
    # keep it once, in the readable text column, rather than twice at up to 16 MB each.
    if type(message.content) is str and message.content == text:
        del data["content"]
    encoded, size = encode_document(data, f"return_val[{idx}].message", models, fields=True)
    assert encoded is not None  # noqa: S101 - data is a dict, never None
    return encoded, size


def encode_entry(
    namespace: str,
    prompt: str,
    llm_string: str,
    return_val: Sequence[Generation],
    *,
    created_at: datetime,
    updated_at: datetime,
    expires_at: datetime | None,
    secret: bytes | None = None,
    models: ModelAllowlist = NO_MODELS,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The entry row and generation rows that store ``return_val`` under its key."""
    generation_rows, value_size = encode_generations(return_val, models)
    entry_row = {
        "key_hash": entry_key(namespace, prompt, llm_string, secret),
        "namespace": escape_text(namespace),
        "prompt": escape_text(prompt),
        "llm_string": escape_text(llm_string),
        "llm_model": model_of(llm_string),
        "created_at": created_at,
        "updated_at": updated_at,
        "expires_at": expires_at,
        "generation_count": len(generation_rows),
        "size_bytes": utf8_size(prompt) + utf8_size(llm_string) + value_size,
    }
    return entry_row, generation_rows


# -- decoding ----------------------------------------------------------------------------


def decode_generations(
    rows: Sequence[Sequence[Any]], *, key_hash: str, models: ModelAllowlist = NO_MODELS
) -> list[Generation] | None:
    """Rebuild a cache value from its generation rows, or return None on a miss.

    Each row is ``(generation_type, text, generation_info, message)``, the JSON columns as
    text (or as parsed documents). A row that cannot be rebuilt makes the whole value a miss,
    with a warning: a partial value would be a wrong answer.
    """
    if not rows:
        return None
    try:
        return rebuild_generations(rows, models=models)
    except Exception as exc:  # noqa: BLE001 - any malformed row is a miss, never a crash
        logger.warning(
            "langchain-sqlcache: entry %s cannot be rebuilt (%s: %s); treating it as a miss",
            key_hash,
            type(exc).__name__,
            exc,
        )
        return None


def rebuild_generations(
    rows: Sequence[Sequence[Any]], *, models: ModelAllowlist = NO_MODELS
) -> list[Generation]:
    """Rebuild a cache value from its generation rows (see :func:`decode_generations`).

    Raises:
        Exception: Whatever a row that cannot be rebuilt makes the decoder raise (a class
            outside the allowlist, a malformed document, ...), for a caller that reports it.

    """
    return [_decode_generation(*row, models=models) for row in rows]


def _decode_generation(
    generation_type: str,
    stored_text: str,
    stored_info: Any,
    stored_message: Any,
    *,
    models: ModelAllowlist,
) -> Generation:
    generation_cls = GENERATION_CLASSES[generation_type]
    text = unescape_text(stored_text)
    generation_info = decode_document(stored_info, models)
    if generation_info is not None and type(generation_info) is not dict:
        msg = "generation_info is not an object"
        raise TypeError(msg)
    if issubclass(generation_cls, ChatGeneration):
        message = _decode_message(stored_message, text, models)
        return generation_cls(message=message, generation_info=generation_info)
    return generation_cls(text=text, generation_info=generation_info)


# The escape marker as json.dumps writes it (ASCII escapes); jsonb's text form, and documents
# written without ASCII escapes, hold the character itself.
ESCAPED_MARKER = json.dumps(ESCAPE_MARKER)[1:-1]


def decode_document(value: Any, models: ModelAllowlist = NO_MODELS) -> Any:
    """Parse a JSON column (text, or a document a driver parsed) back into its value.

    A text that holds no escape marker has no tag and no escaped string, which spares
    walking the parsed document (most documents).
    """
    if isinstance(value, str):
        if value == "null":  # generation_info, most of the time
            return None
        if ESCAPE_MARKER not in value and ESCAPED_MARKER not in value:
            return json.loads(value)
        value = json.loads(value)
    return _Decoder(models).decode(value)


class _Decoder:
    """Inverts :class:`_Encoder`; anything malformed raises (the entry is then a miss)."""

    def __init__(self, models: ModelAllowlist) -> None:
        self.models = models

    def decode(self, value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return unescape_text(value)
        if kind is list:
            return [self.decode(item) for item in value]
        if kind is dict:
            if len(value) == 1 and ESCAPE_MARKER in value:
                tag, *args = value[ESCAPE_MARKER]
                return _UNTAG[tag](self, *args)
            return {unescape_text(key): self.decode(item) for key, item in value.items()}
        return value

    def items(self, items: list[Any]) -> list[Any]:
        if type(items) is not list:
            msg = "tagged items are not a list"
            raise TypeError(msg)
        return [self.decode(item) for item in items]

    def pairs(self, pairs: list[Any]) -> dict[Any, Any]:
        if type(pairs) is not list:
            msg = "tagged pairs are not a list"
            raise TypeError(msg)
        return {self.decode(key): self.decode(item) for key, item in pairs}

    def rebuild_set(self, kind: type[set[Any]] | type[frozenset[Any]], items: list[Any]) -> Any:
        """A set whose iteration order (so its repr, and LangChain's dumps) is the stored one.

        Small tables resolve a hash collision by a probe that depends on which element came
        first, so building from the stored (iteration) order can reorder colliding elements;
        for a few elements, the insertion order that gives the stored order back is searched.
        """
        elements = self.items(items)
        built = kind(elements)
        if 1 < len(elements) <= SET_ORDER_SEARCH_LIMIT and not _in_order(built, elements):
            for order in itertools.permutations(elements):
                candidate = kind(order)
                if _in_order(candidate, elements):
                    return candidate
        return built

    def model(self, name: str, fields: Any) -> Any:
        values = self.decode(fields)
        if type(values) is not dict:
            msg = "model fields are not an object"
            raise TypeError(msg)
        cls = self.models.get(name)
        if cls is None:
            # A class this cache does not allow: its fields, as plain data.
            return values
        if issubclass(cls, RootModel):
            return cls.model_validate(values["root"])
        return cls.model_validate(values)


def _decode_tz(spec: Any) -> tzinfo | None:
    if spec is None:
        return None
    kind, *args = spec
    if kind == "timezone":
        offset = timedelta(microseconds=args[0])
        return timezone(offset) if args[1] is None else timezone(offset, unescape_text(args[1]))
    if kind == "zoneinfo":
        return ZoneInfo(unescape_text(args[0]))
    if kind == "pydantic" and type(args[0]) is int:
        return TzInfo(args[0])
    msg = f"unknown time zone form {kind!r}"
    raise ValueError(msg)


def _decode_float(text: str) -> float:
    if text not in ("nan", "inf", "-inf"):
        msg = f"not a tagged float: {text!r}"
        raise ValueError(msg)
    return float(text)


# Up to 6! = 720 tries, only for sets whose elements collide.
SET_ORDER_SEARCH_LIMIT = 6


def _in_order(built: Iterable[Any], elements: list[Any]) -> bool:
    return all(a is b for a, b in zip(built, elements, strict=True))


_UNTAG: dict[str, Any] = {
    "tuple": lambda d, items: tuple(d.items(items)),
    "set": lambda d, items: d.rebuild_set(set, items),
    "frozenset": lambda d, items: d.rebuild_set(frozenset, items),
    "dict": lambda d, pairs: d.pairs(pairs),
    "json": lambda d, text: d.decode(json.loads(text)),
    "model": lambda d, name, fields: d.model(name, fields),
    "int": lambda _, text: int(text, 16),
    "float": lambda _, text: _decode_float(text),
    "datetime": lambda _, iso, tz, fold: datetime.fromisoformat(iso).replace(
        tzinfo=_decode_tz(tz), fold=fold
    ),
    "date": lambda _, iso: date.fromisoformat(iso),
    "time": lambda _, iso, tz, fold: time.fromisoformat(iso).replace(
        tzinfo=_decode_tz(tz), fold=fold
    ),
    "timedelta": lambda _, days, seconds, micros: timedelta(days, seconds, micros),
    "uuid": lambda _, text: UUID(text),
    "decimal": lambda _, text: Decimal(text),
    "bytes": lambda _, text: base64.b64decode(text, validate=True),
    "bytearray": lambda _, text: bytearray(base64.b64decode(text, validate=True)),
}


def _decode_message(data: Any, text: str, models: ModelAllowlist) -> BaseMessage:
    fields = decode_document(data, models)
    if type(fields) is not dict:
        msg = "message is not an object"
        raise TypeError(msg)
    message_cls = MESSAGE_CLASSES[fields["type"]]
    fields.setdefault("content", text)
    return message_cls.model_validate(fields)
