"""Throughput on real data, measured the way a user compares tools: one run, the same inputs for every system.

* GMNER text NER: the first `n_tweets` dev tweets through `Agent.extract_batch` (tweets/s, batched as the agent
  batches), the first `n_single` one request at a time through `Agent.extract` (p50 / p95 latency), and spaCy's
  small English pipeline (`nlp.pipe`) on the same tweets (tweets/s and the ratio between the two).
* MNRE relation classification given the pair: the first `n_pairs` val pairs (pairs/s).
* M2E2 NER + events: the first `n_sentences` dev sentences (sentences/s).
* seconds per pipeline stage, summed over each section's results (`Result.timings`).

Sections whose dataset is not on disk are skipped with the reason. The module only uses the agent's public API,
so the same code times an older checkout (where `extract_batch` takes no given pairs, those go one at a time).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def _stages(results: Sequence[Any]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        for stage, seconds in getattr(result, "timings", {}).items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return {stage: round(seconds, 3) for stage, seconds in totals.items()}


def _in_batches(agent: Any, texts: Sequence[str], tasks: Any, labels: Any,
                pairs: Sequence[Any] | None = None) -> list[Any]:
    size = int(getattr(agent.settings, "batch_size", 8))
    takes_pairs = "pairs" in inspect.signature(agent.extract_batch).parameters
    results: list[Any] = []
    for start in range(0, len(texts), size):
        chunk = list(texts[start:start + size])
        if pairs is None:
            results.extend(agent.extract_batch(chunk, tasks=tasks, labels=labels))
        elif takes_pairs:
            results.extend(agent.extract_batch(chunk, tasks=tasks, labels=labels, pairs=pairs[start:start + size]))
        else:  # an agent that ranks given pairs one request at a time
            results.extend(agent.extract(text, tasks=tasks, labels=labels, pairs=given)
                           for text, given in zip(chunk, pairs[start:start + size]))
    return results


def measure_gmner(agent: Any, n_tweets: int = 96, n_single: int = 24) -> dict[str, Any]:
    from reamo.datasets import read_gmner
    from reamo.eval.runner import DATASETS

    spec = DATASETS["gmner"]
    texts = [e.text for e in read_gmner("dev", limit=n_tweets)]
    agent.extract(texts[0], tasks=spec.tasks, labels=spec.labels)  # warm-up, not counted
    seconds, results = _timed(lambda: _in_batches(agent, texts, spec.tasks, spec.labels))
    single = []
    for text in texts[:n_single]:
        took, _ = _timed(lambda t=text: agent.extract(t, tasks=spec.tasks, labels=spec.labels))
        single.append(took)
    out: dict[str, Any] = {
        "n": len(texts), "batched_s": seconds, "tweets_per_s": len(texts) / seconds,
        "entities_found": sum(len(r.entities) for r in results), "stages_s": _stages(results),
        "single": {"n": len(single), "p50_s": float(np.percentile(single, 50)),
                   "p95_s": float(np.percentile(single, 95))},
    }
    try:
        from reamo.eval.baselines import load_spacy

        nlp = load_spacy()
        list(nlp.pipe(texts[:8]))  # warm-up
        spacy_s, _ = _timed(lambda: list(nlp.pipe(texts)))
        out["spacy"] = {"tweets_per_s": len(texts) / spacy_s}
        out["spacy_over_reamo"] = out["spacy"]["tweets_per_s"] / out["tweets_per_s"]
    except Exception as error:  # noqa: BLE001 - the comparison is optional: say why it is missing
        out["spacy"] = {"skipped": f"{type(error).__name__}: {error}"}
    return out


def measure_mnre(agent: Any, n_pairs: int = 48) -> dict[str, Any]:
    from reamo.datasets import read_mnre
    from reamo.eval.runner import DATASETS, given_pair

    spec = DATASETS["mnre"]
    examples = read_mnre("val", limit=n_pairs)
    pairs = []
    for example in examples:
        head, tail = given_pair(example)  # type: ignore[misc]
        pairs.append([(head.text, tail.text)])
    agent.extract(examples[0].text, tasks=spec.tasks, labels=spec.labels, pairs=pairs[0])  # warm-up
    seconds, results = _timed(lambda: _in_batches(agent, [e.text for e in examples], spec.tasks, spec.labels, pairs))
    return {"n": len(examples), "seconds": seconds, "pairs_per_s": len(examples) / seconds,
            "relations_named": sum(len(r.relations) for r in results), "stages_s": _stages(results)}


def measure_m2e2(agent: Any, n_sentences: int = 48) -> dict[str, Any]:
    from reamo.datasets import read_m2e2
    from reamo.eval.runner import DATASETS

    spec = DATASETS["m2e2"]
    texts = [e.text for e in read_m2e2("dev", limit=n_sentences)]
    agent.extract(texts[0], tasks=spec.tasks, labels=spec.labels)  # warm-up
    seconds, results = _timed(lambda: _in_batches(agent, texts, spec.tasks, spec.labels))
    return {"n": len(texts), "seconds": seconds, "sentences_per_s": len(texts) / seconds,
            "events_found": sum(len(r.events) for r in results), "stages_s": _stages(results)}


def measure_datasets(agent: Any, n_tweets: int = 96, n_single: int = 24, n_pairs: int = 48,
                     n_sentences: int = 48) -> dict[str, Any]:
    """Every section; a section whose data is missing (or that fails) is reported as skipped with the reason."""
    from reamo.datasets import DatasetError

    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "gmner": lambda: measure_gmner(agent, n_tweets, n_single),
        "mnre": lambda: measure_mnre(agent, n_pairs),
        "m2e2": lambda: measure_m2e2(agent, n_sentences),
    }
    out: dict[str, Any] = {}
    for name, run in sections.items():
        try:
            out[name] = run()
        except DatasetError as error:
            out[name] = {"skipped": f"dataset not found: {error}"}
    return out


def render_markdown(report: dict[str, Any]) -> list[str]:
    """Lines of the bench report's "Throughput on the datasets" section."""
    lines = ["| data | what | n | throughput | latency / notes |", "|---|---|---|---|---|"]
    gmner, mnre, m2e2 = report.get("gmner", {}), report.get("mnre", {}), report.get("m2e2", {})
    if "skipped" in gmner:
        lines.append(f"| GMNER dev | NER | – | – | skipped: {gmner['skipped']} |")
    elif gmner:
        spacy = gmner.get("spacy", {})
        ratio = (f"spaCy {spacy['tweets_per_s']:.0f} tweets/s, {gmner['spacy_over_reamo']:.0f}x faster"
                 if "tweets_per_s" in spacy else f"spaCy skipped: {spacy.get('skipped')}")
        lines.append(f"| GMNER dev | NER, batched | {gmner['n']} | {gmner['tweets_per_s']:.2f} tweets/s | {ratio} |")
        single = gmner["single"]
        lines.append(f"| GMNER dev | NER, one request at a time | {single['n']} | – | p50 {single['p50_s']:.3f} s, "
                     f"p95 {single['p95_s']:.3f} s |")
    for name, data, what, unit, key in (("MNRE val", mnre, "relation of a given pair", "pairs/s", "pairs_per_s"),
                                        ("M2E2 dev", m2e2, "NER + events", "sentences/s", "sentences_per_s")):
        if "skipped" in data:
            lines.append(f"| {name} | {what} | – | – | skipped: {data['skipped']} |")
        elif data:
            stages = ", ".join(f"{k} {v:.1f}" for k, v in data["stages_s"].items())
            lines.append(f"| {name} | {what} | {data['n']} | {data[key]:.2f} {unit} | stages (s, summed): {stages} |")
    return lines
