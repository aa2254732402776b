"""Generations to row values and back, exactly, and the key that finds an entry.

Rows are untrusted input: anyone who can write the tables can plant one. Decoding therefore
rebuilds only an explicit allowlist of generation and message classes from plain data (no
``langchain_core.load``, no import paths, no secrets), and a row that does not decode is a miss
with a logged warning.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

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
# either is stored as this marker followed by its ASCII JSON form. The marker is a Unicode
# noncharacter, so ordinary text never starts with it; a string that does is escaped too,
# which keeps the scheme reversible for every Python string.
ESCAPE_MARKER = "\ufdd0"


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
        return ESCAPE_MARKER + json.dumps(value)
    return value


def unescape_text(value: str) -> str:
    """Invert :func:`escape_text`."""
    if value.startswith(ESCAPE_MARKER):
        restored = json.loads(value[len(ESCAPE_MARKER) :])
        if not isinstance(restored, str):
            msg = "escaped text does not hold a string"
            raise ValueError(msg)
        return restored
    return value


def escape_json(value: Any) -> Any:
    """Apply :func:`escape_text` to every string (keys included) of a JSON document."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, Mapping):
        return {escape_json(_json_key(key)): escape_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_json(item) for item in value]
    return value


def unescape_json(value: Any) -> Any:
    """Invert :func:`escape_json`."""
    if isinstance(value, str):
        return unescape_text(value)
    if isinstance(value, dict):
        return {unescape_text(key): unescape_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unescape_json(item) for item in value]
    return value


def _json_key(key: object) -> str:
    if isinstance(key, str):
        return key
    msg = f"JSON object keys must be strings, got {type(key).__name__} {key!r}"
    raise TypeError(msg)


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


def encode_generations(return_val: Sequence[Generation]) -> tuple[list[dict[str, Any]], int]:
    """Turn a cache value into generation rows (without ``entry_id``) and their byte size.

    Raises:
        TypeError: ``return_val`` is not a sequence of the four generation classes, or holds
            a message class or a value that cannot be stored exactly.

    """
    if isinstance(return_val, (str, bytes)) or not isinstance(return_val, Iterable):
        msg = f"return_val must be a sequence of Generation, got {type(return_val).__name__}"
        raise TypeError(msg)
    encoded = [_encode_generation(idx, generation) for idx, generation in enumerate(return_val)]
    return [row for row, _ in encoded], sum(size for _, size in encoded)


def _encode_generation(idx: int, generation: Generation) -> tuple[dict[str, Any], int]:
    generation_type = type(generation).__name__
    if GENERATION_CLASSES.get(generation_type) is not type(generation):
        msg = (
            f"return_val[{idx}] is a {type(generation).__module__}.{type(generation).__qualname__}"
            f", not one of {', '.join(GENERATION_CLASSES)}"
        )
        raise TypeError(msg)
    generation_info, info_size = _encode_json(idx, generation.generation_info)
    message: dict[str, Any] | None = None
    message_size = 0
    input_tokens = output_tokens = None
    if isinstance(generation, ChatGeneration):
        message, message_size = _encode_message(idx, generation.message, generation.text)
        usage = getattr(generation.message, "usage_metadata", None) or {}
        input_tokens, output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
    row = {
        "idx": idx,
        "generation_type": generation_type,
        "text": escape_text(generation.text),
        "generation_info": generation_info,
        "message": message,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
    }
    return row, utf8_size(generation.text) + info_size + message_size


def _encode_message(idx: int, message: BaseMessage, text: str) -> tuple[dict[str, Any], int]:
    if MESSAGE_CLASSES.get(message.type) is not type(message):
        msg = f"return_val[{idx}].message is a {type(message).__qualname__}, which is not cached"
        raise TypeError(msg)
    data = message.model_dump()
    # A string content is the generation's text (ChatGeneration derives text from it):
    # keep it once, in the readable text column, rather than twice at up to 16 MB each.
    if isinstance(message.content, str) and message.content == text:
        del data["content"]
    encoded, size = _encode_json(idx, data)
    assert encoded is not None  # noqa: S101 - data is a dict, never None
    return encoded, size


def _encode_json(idx: int, value: dict[str, Any] | None) -> tuple[dict[str, Any] | None, int]:
    """Escape a JSON document's strings; return it with its size as JSON text."""
    if value is None:
        return None, 0
    try:
        # Dump strictly now, so a value that the database would reject or change (NaN, a
        # set, a datetime) fails here, before anything is written.
        dumped = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"return_val[{idx}] holds a value that is not JSON: {exc}"
        raise TypeError(msg) from exc
    if not NEEDS_ESCAPE_IN_JSON.search(dumped) and json.loads(dumped) == value:
        # Nothing to escape (no NUL, marker or surrogate), and plain JSON already (no
        # tuples or non-string keys that the walk would convert or refuse): as it is.
        return value, len(dumped)
    encoded: dict[str, Any] = escape_json(value)
    return encoded, len(dumped)


# What json.dumps (ASCII escapes) writes for a NUL, the escape marker and any surrogate
# (lone, or half of a pair encoding a character beyond the BMP, such as an emoji).
NEEDS_ESCAPE_IN_JSON = re.compile(r"\\u(?:0000|fdd0|d[89a-f])")


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
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The entry row and generation rows that store ``return_val`` under its key."""
    generation_rows, value_size = encode_generations(return_val)
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


def decode_generations(rows: Sequence[Sequence[Any]], *, key_hash: str) -> list[Generation] | None:
    """Rebuild a cache value from its generation rows, or return None on a miss.

    Each row is ``(generation_type, text, generation_info, message)``, the JSON columns as
    text (or as parsed documents). A row that cannot be rebuilt makes the whole value a miss,
    with a warning: a partial value would be a wrong answer.
    """
    if not rows:
        return None
    try:
        return rebuild_generations(rows)
    except Exception as exc:  # noqa: BLE001 - any malformed row is a miss, never a crash
        logger.warning(
            "langchain-sqlcache: entry %s cannot be rebuilt (%s: %s); treating it as a miss",
            key_hash,
            type(exc).__name__,
            exc,
        )
        return None


def rebuild_generations(rows: Sequence[Sequence[Any]]) -> list[Generation]:
    """Rebuild a cache value from its generation rows (see :func:`decode_generations`).

    Raises:
        Exception: Whatever a row that cannot be rebuilt makes the decoder raise (a class
            outside the allowlist, a malformed document, ...), for a caller that reports it.

    """
    return [_decode_generation(*row) for row in rows]


def _decode_generation(
    generation_type: str, stored_text: str, stored_info: Any, stored_message: Any
) -> Generation:
    generation_cls = GENERATION_CLASSES[generation_type]
    text = unescape_text(stored_text)
    generation_info = _parse_json(stored_info)
    if generation_info is not None and not isinstance(generation_info, dict):
        msg = "generation_info is not an object"
        raise TypeError(msg)
    if issubclass(generation_cls, ChatGeneration):
        message = _decode_message(stored_message, text)
        return generation_cls(message=message, generation_info=generation_info)
    return generation_cls(text=text, generation_info=generation_info)


# The escape marker as json.dumps writes it (ASCII escapes); jsonb's text form, and documents
# written without ASCII escapes, hold the character itself.
ESCAPED_MARKER = json.dumps(ESCAPE_MARKER)[1:-1]


def _parse_json(value: Any) -> Any:
    """Parse a JSON column and undo :func:`escape_json`.

    A document whose text holds no escape marker has nothing to undo, which spares walking
    it (most documents: escaping is for NUL and lone surrogates).
    """
    if isinstance(value, str):
        if value == "null":  # generation_info, most of the time
            return None
        if ESCAPE_MARKER not in value and ESCAPED_MARKER not in value:
            return json.loads(value)
        value = json.loads(value)
    # A driver may hand back a parsed document.
    return unescape_json(value)


def _decode_message(data: Any, text: str) -> BaseMessage:
    fields = _parse_json(data)
    if not isinstance(fields, dict):
        msg = "message is not an object"
        raise TypeError(msg)
    message_cls = MESSAGE_CLASSES[fields["type"]]
    fields.setdefault("content", text)
    return message_cls.model_validate(fields)
