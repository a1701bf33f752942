"""Soak test: many requests through one shared agent from several threads; reports RSS growth and latency.

Answers "does memory stay bounded and do results stay unmixed under load?" with numbers (`reamo bench --soak N`).
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
from pydantic import BaseModel


class SoakReport(BaseModel):
    requests: int
    threads: int
    seconds: float
    rss_start_mb: float
    rss_after_warmup_mb: float
    rss_end_mb: float
    growth_after_warmup_mb: float
    mixed_results: int
    failures: int


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def run_soak(agent: Any, requests: int = 200, threads: int = 8, max_new_tokens: int = 8, warmup: int = 16) -> SoakReport:
    """`requests` extractions of distinct texts over `threads` threads; growth is measured after `warmup` requests
    (caches and lazy loads fill first)."""
    texts = [f"Rafael Nadal met visitor number {i} in Mallorca." for i in range(requests)]
    start = _rss_mb()

    def one(text: str) -> tuple[str, str | None]:
        try:
            return agent.extract(text=text, tasks="ner", max_new_tokens=max_new_tokens).text, None
        except Exception as err:  # noqa: BLE001 - counted, reported
            return text, f"{type(err).__name__}: {err}"

    for text in texts[:warmup]:
        one(text)
    after_warmup = _rss_mb()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = list(pool.map(one, texts[warmup:]))
    seconds = time.perf_counter() - started
    end = _rss_mb()
    return SoakReport(
        requests=requests, threads=threads, seconds=seconds, rss_start_mb=start, rss_after_warmup_mb=after_warmup,
        rss_end_mb=end, growth_after_warmup_mb=end - after_warmup,
        mixed_results=sum(1 for text, (got, _) in zip(texts[warmup:], outcomes) if got != text),
        failures=sum(1 for _, error in outcomes if error),
    )
