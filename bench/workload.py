"""What the subjects are given, and the clock and the log every scenario uses.

A chat model's answer as LangChain caches it, prompts of an exact size, and the filler entries
of the growth table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from bench.plan import PROMPT_SIZES


def answer(i: int, generations: int) -> list[Generation]:
    """A chat model's answer, as LangChain caches it: ChatGenerations with usage metadata."""
    return [
        ChatGeneration(
            message=AIMessage(
                content=f"Answer {i}.{k}: " + "lorem ipsum dolor sit amet " * 14,
                id=f"run-{i}-{k}",
                usage_metadata={"input_tokens": 40, "output_tokens": 90, "total_tokens": 130},
                response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "stop"},
            ),
            generation_info={"finish_reason": "stop"},
        )
        for k in range(generations)
    ]


def prompt_of(label: str, size: int) -> str:
    """A chat prompt of exactly ``size`` ASCII bytes, distinct per label."""
    head = f'[{{"role": "user", "content": "{label}: '
    body = "please summarize the attached report " * (size // 37 + 1)
    return (head + body)[: size - 3] + '"}]'


def filler_prompt(i: int) -> str:
    return prompt_of(f"filler {i:010d}", PROMPT_SIZES["200 B"])


def filler_generations(i: int) -> int:
    """Filler entries alternate: even ones hold 1 generation, odd ones 4."""
    return 1 if i % 2 == 0 else 4


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _ns(call: Callable[[], object]) -> tuple[int, object]:
    started = time.perf_counter_ns()
    result = call()
    return time.perf_counter_ns() - started, result


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
