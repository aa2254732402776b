"""LangChain's own SQL caches, SQLAlchemyCache and SQLAlchemyMd5Cache: the peers measured."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import create_engine

from bench.backends import Backend
from bench.plan import LC_CACHE, LC_MD5, LLM
from bench.results import BackendResult
from bench.workload import answer


def langchain_caches(backend: Backend, result: BackendResult) -> dict[str, Any]:
    """SQLAlchemyCache and SQLAlchemyMd5Cache where they run; the reason where they do not."""
    from langchain_community.cache import SQLAlchemyCache, SQLAlchemyMd5Cache

    caches: dict[str, Any] = {}
    for name, factory in ((LC_CACHE, SQLAlchemyCache), (LC_MD5, SQLAlchemyMd5Cache)):
        try:
            cache = factory(create_engine(backend.sync_url))
            cache.update("probe", LLM, answer(0, 1))
            if cache.lookup("probe", LLM) is None:
                result.failures[name] = "fails: a written value reads back as a miss"
                continue
            caches[name] = cache
        except Exception as exc:  # noqa: BLE001 - a failing peer is a result, not a crash
            result.failures[name] = f"fails: {_reason(exc)}"
    return caches


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    first = re.sub(r"^\(in table [^)]*\): ", "", first)
    return f"{type(exc).__name__}: {first}"[:140]
