"""Scores one system's predictions on one dataset into flat metric rows, the record `reamo.eval.report` renders.

What is scored per dataset (both span modes, "exact" and "relaxed", see `reamo.eval.metrics`):

* GMNER: "ner" (span + type) and the GMNER triple scores "gmner" / "mner" / "eeg" (`reamo.eval.gmner`).
* MNRE: "re" (triples: head span, tail span, relation) and "rc" (relation classification given the gold pair: the
  predicted relation between the pair, found with `pair_label`, against the gold label; "None" excluded).
* M2E2: "ner", "et" (trigger), "ea" (argument).
* other sources: what the gold results' `tasks` say.

Where events are scored, also the event-free sentences (no gold event) that got any event: the issue's "no
invented events" bound (at most 1 in 10), a wrong confident answer that per-trigger precision hides.

Besides the rows: an entity type confusion table (gold type x predicted type over exact-span-matched entities,
plus "(missed)" / "(spurious)"), and the box IoU of every span-matched entity where both gold and prediction have an
image box (the grounding histogram).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from reamo.eval.gmner import gold_boxes, predicted_box, score_gmner
from reamo.eval.metrics import (
    MatchMode,
    Scores,
    evaluate,
    max_matching,
    mentions_match,
    pair_label,
    relation_classification_scores,
)

from reamo.datasets import MNRE_NO_RELATION, Example
from reamo.schema import Mention, Result, Task

MODES: tuple[MatchMode, ...] = ("exact", "relaxed")
MISSED = "(missed)"
SPURIOUS = "(spurious)"
SOURCE_TASKS: dict[str, tuple[Task, ...]] = {"gmner": ("ner",), "mnre": ("re",), "m2e2": ("ner", "ee")}


class MetricRow(BaseModel):
    """One metric of one system: `task` in ner, re, et, ea, gmner, mner, eeg, rc; `mode` exact or relaxed."""

    model_config = ConfigDict(extra="forbid")

    task: str
    mode: str
    scores: Scores
    per_type: dict[str, Scores] = Field(default_factory=dict)


class EventFreeCount(BaseModel):
    """How many sentences without a gold event the system gave at least one event (an invented event)."""

    model_config = ConfigDict(extra="forbid")

    n_event_free: int
    n_given_an_event: int

    @property
    def share(self) -> float:
        return self.n_given_an_event / self.n_event_free if self.n_event_free else 0.0


class SystemReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    n_examples: int
    n_failed: int = 0
    seconds_per_example: float | None = None
    rows: list[MetricRow]
    confusion: dict[str, dict[str, int]] = Field(default_factory=dict)
    grounding_ious: list[float] = Field(default_factory=list)
    event_free: EventFreeCount | None = None

    def row(self, task: str, mode: str = "exact") -> MetricRow | None:
        return next((r for r in self.rows if r.task == task and r.mode == mode), None)


class EvalReport(BaseModel):
    """Everything one `run_eval` produced; `systems` holds the evaluated system first, then the baselines."""

    model_config = ConfigDict(extra="forbid")

    data: str
    source: str
    split: str
    n_examples: int
    limit: int | None = None
    system: str
    systems: dict[str, SystemReport]
    notes: list[str] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)

    def f1(self, task: str, mode: str = "exact", system: str | None = None) -> float:
        row = self.systems[system or self.system].row(task, mode)
        if row is None:
            raise KeyError(f"no {task}/{mode} score for {system or self.system}")
        return row.scores.f1


def scored_tasks(examples: Sequence[Example]) -> tuple[Task, ...]:
    source = examples[0].source if examples else ""
    if source in SOURCE_TASKS:
        return SOURCE_TASKS[source]
    wanted = {task for example in examples for task in example.gold.tasks}
    return tuple(task for task in ("ner", "re", "ee") if task in wanted)  # type: ignore[misc]


def classification_rows(examples: Sequence[Example], preds: Sequence[Result]) -> list[MetricRow]:
    """MNRE relation classification given the pair, overall and per gold label, in both modes."""
    rows = []
    for mode in MODES:
        gold_labels, pred_labels = [], []
        for example, pred in zip(examples, preds, strict=True):
            head = Mention.model_validate(example.meta["head"])
            tail = Mention.model_validate(example.meta["tail"])
            gold_labels.append(str(example.meta["relation"]))
            pred_labels.append(pair_label(pred, head, tail, mode))
        labels = sorted((set(gold_labels) | set(pred_labels)) - {MNRE_NO_RELATION})
        per_type = {}
        for label in labels:
            tp = sum(1 for g, p in zip(gold_labels, pred_labels, strict=True) if g == p == label)
            per_type[label] = Scores.from_counts(tp, pred_labels.count(label), gold_labels.count(label))
        rows.append(MetricRow(task="rc", mode=mode, scores=relation_classification_scores(gold_labels, pred_labels),
                              per_type=per_type))
    return rows


def event_free_count(examples: Sequence[Example], preds: Sequence[Result]) -> EventFreeCount:
    """The sentences without a gold event, and how many of them the system gave an event."""
    free = [pred for example, pred in zip(examples, preds, strict=True) if not example.gold.events]
    return EventFreeCount(n_event_free=len(free), n_given_an_event=sum(1 for pred in free if pred.events))


def _span_matching(preds: Sequence[Mention], golds: Sequence[Mention]) -> list[tuple[int, int]]:
    """One-to-one (pred, gold) index pairs with equal char spans."""
    return max_matching(len(preds), len(golds), lambda p, g: mentions_match(preds[p], golds[g], "exact"))


def type_confusion(pairs: Sequence[tuple[Result, Result]]) -> dict[str, dict[str, int]]:
    """Gold type -> predicted type counts over entities paired one-to-one by exact span (type ignored)."""
    counts: Counter[tuple[str, str]] = Counter()
    for gold, pred in pairs:
        golds, preds = gold.entities, pred.entities
        matched = _span_matching(preds, golds)
        for p, g in matched:
            counts[(golds[g].type, preds[p].type)] += 1
        for g in set(range(len(golds))) - {g for _, g in matched}:
            counts[(golds[g].type, MISSED)] += 1
        for p in set(range(len(preds))) - {p for p, _ in matched}:
            counts[(SPURIOUS, preds[p].type)] += 1
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for (gold_type, pred_type), count in sorted(counts.items()):
        table[gold_type][pred_type] = count
    return dict(table)


def grounding_ious(pairs: Sequence[tuple[Result, Result]]) -> list[float]:
    """Best box IoU of each exact-span-matched entity where gold and prediction both have an image box."""
    ious = []
    for gold, pred in pairs:
        golds, preds = gold.entities, pred.entities
        for p, g in _span_matching(preds, golds):
            box, boxes = predicted_box(preds[p]), gold_boxes(golds[g])
            if box is not None and boxes:
                ious.append(max(box.iou(b) for b in boxes))
    return ious


def score_system(name: str, examples: Sequence[Example], preds: Sequence[Result], n_failed: int = 0,
                 seconds_per_example: float | None = None) -> SystemReport:
    """All metrics of one system on `examples` (preds[i] predicts examples[i])."""
    if len(examples) != len(preds):
        raise ValueError(f"{len(examples)} examples but {len(preds)} predictions")
    pairs = [(example.gold, pred) for example, pred in zip(examples, preds, strict=True)]
    tasks = scored_tasks(examples)
    source = examples[0].source if examples else ""
    rows: list[MetricRow] = []
    for mode in MODES:
        report = evaluate(pairs, mode=mode, tasks=tasks)
        for part, task_report in report.tasks.items():
            rows.append(MetricRow(task=part, mode=mode, scores=task_report.overall, per_type=task_report.per_type))
    if source == "gmner":
        for mode in MODES:
            gmner = score_gmner(pairs, mode=mode)
            rows.extend(MetricRow(task=task, mode=mode, scores=getattr(gmner, task)) for task in ("gmner", "mner", "eeg"))
    # given-pair classification where every example names its pair (not MNRE read as sentences: `--triples`)
    if examples and all("head" in e.meta and "relation" in e.meta for e in examples):
        rows.extend(classification_rows(examples, preds))
    order = {task: i for i, task in enumerate(("ner", "re", "rc", "et", "ea", "gmner", "mner", "eeg"))}
    rows.sort(key=lambda r: (order.get(r.task, 99), MODES.index(r.mode)))  # type: ignore[arg-type]
    with_ner = "ner" in tasks
    return SystemReport(
        name=name, n_examples=len(examples), n_failed=n_failed, seconds_per_example=seconds_per_example, rows=rows,
        confusion=type_confusion(pairs) if with_ner else {}, grounding_ious=grounding_ious(pairs) if with_ner else [],
        event_free=event_free_count(examples, preds) if "ee" in tasks else None,
    )
