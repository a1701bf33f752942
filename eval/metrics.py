"""Span-offset micro precision / recall / F1 for NER, RE and EE (trigger ET, argument EA), MUIE style.

What must agree for a prediction to count (the usual UIE / MUIE definitions):

* NER: entity span + entity type.
* RE: head span + tail span (direction matters) + relation type.
* ET: trigger span + event type.
* EA: argument span + role + event type of the argument's event (the trigger need not match).

How spans are compared (`mode`):

* "exact": character offsets equal; a prediction without a span never matches.
* "relaxed": spans overlap by at least one character.
* "text": spans are ignored and mentions match by normalized text (`normalize_text`), for predictions without spans.

Within one example, predictions and gold items are paired one-to-one by maximum bipartite matching, so duplicates
never count twice. Types and roles compare as exact strings. Counts are summed over all examples (micro average);
a ratio with a zero denominator is 0.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import linear_sum_assignment

from reamo.schema import Mention, Result, Task, TextSpan

if TYPE_CHECKING:  # only for annotations: scoring works on any (gold, prediction) pairs
    from reamo.datasets import Example

MatchMode = Literal["exact", "relaxed", "text"]
ScoreTask = Literal["ner", "re", "et", "ea"]
TASK_PARTS: dict[Task, tuple[ScoreTask, ...]] = {"ner": ("ner",), "re": ("re",), "ee": ("et", "ea")}
NO_RELATION = "None"


class Scores(BaseModel):
    """Micro P/R/F1 with the counts they come from, so scores can be summed and re-derived."""

    model_config = ConfigDict(extra="forbid")

    precision: float
    recall: float
    f1: float
    tp: int
    n_pred: int
    n_gold: int

    @classmethod
    def from_counts(cls, tp: int, n_pred: int, n_gold: int) -> "Scores":
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision=precision, recall=recall, f1=f1, tp=tp, n_pred=n_pred, n_gold=n_gold)


class TaskReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overall: Scores
    per_type: dict[str, Scores]


class Report(BaseModel):
    """Scores per scored task ("ner", "re", "et", "ea"), each with a per-type breakdown."""

    model_config = ConfigDict(extra="forbid")

    mode: MatchMode
    n_examples: int
    tasks: dict[str, TaskReport]

    def f1(self, task: ScoreTask) -> float:
        return self.tasks[task].overall.f1

    def summary(self) -> str:
        """A small fixed-width table, one line per task."""
        lines = [f"mode={self.mode} examples={self.n_examples}", "task      P      R     F1     tp  pred  gold"]
        for name, report in self.tasks.items():
            s = report.overall
            lines.append(f"{name:<4} {s.precision:6.3f} {s.recall:6.3f} {s.f1:6.3f} {s.tp:6d} {s.n_pred:5d} "
                         f"{s.n_gold:5d}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Matching primitives (shared with reamo.eval.gmner)
# ---------------------------------------------------------------------------------------------------------------

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00b4": "'", "`": "'"})


def normalize_text(text: str) -> str:
    """Text key for "text" matching: NFKC, casefolded, curly quotes straightened, all whitespace removed.

    Removing whitespace makes "Israel 's" (tokenized gold) equal "Israel's" (what a model writes).
    """
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold())


def spans_overlap(a: TextSpan, b: TextSpan) -> bool:
    return a.start < b.end and b.start < a.end


def mentions_match(pred: Mention, gold: Mention, mode: MatchMode) -> bool:
    """Whether two mentions denote the same text under `mode` (see module docstring)."""
    if mode == "text":
        return normalize_text(pred.text) == normalize_text(gold.text)
    if pred.span is None or gold.span is None:
        return False
    if mode == "exact":
        return (pred.span.start, pred.span.end) == (gold.span.start, gold.span.end)
    return spans_overlap(pred.span, gold.span)


def max_matching(n_pred: int, n_gold: int, compatible: Callable[[int, int], bool]) -> list[tuple[int, int]]:
    """Largest one-to-one set of (pred index, gold index) pairs with `compatible(p, g)`, by the Hungarian method."""
    if not n_pred or not n_gold:
        return []
    allowed = np.zeros((n_pred, n_gold), dtype=bool)
    for p in range(n_pred):
        for g in range(n_gold):
            allowed[p, g] = compatible(p, g)
    if not allowed.any():
        return []
    rows, cols = linear_sum_assignment(-allowed.astype(np.float64))
    return [(int(p), int(g)) for p, g in zip(rows, cols, strict=True) if allowed[p, g]]


# ---------------------------------------------------------------------------------------------------------------
# Items per task
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    label: str  # key of the per-type breakdown
    kind: tuple[str, ...]  # must be equal (types, roles)
    mentions: tuple[Mention, ...]  # must match under the mode


def _items(result: Result, task: ScoreTask) -> list[_Item]:
    if task == "ner":
        return [_Item(e.type, (e.type,), (e,)) for e in result.entities]
    if task == "re":
        return [_Item(r.type, (r.type,), (r.head, r.tail)) for r in result.relations]
    if task == "et":
        return [_Item(e.type, (e.type,), (e.trigger,)) for e in result.events]
    return [_Item(a.role, (e.type, a.role), (a.entity,)) for e in result.events for a in e.arguments]


class _Tally:
    def __init__(self) -> None:
        self.tp: Counter[str] = Counter()
        self.pred: Counter[str] = Counter()
        self.gold: Counter[str] = Counter()

    def add(self, gold: list[_Item], pred: list[_Item], mode: MatchMode) -> None:
        def compatible(p: int, g: int) -> bool:
            a, b = pred[p], gold[g]
            pairs = zip(a.mentions, b.mentions, strict=True)
            return a.kind == b.kind and all(mentions_match(x, y, mode) for x, y in pairs)

        self.pred.update(item.label for item in pred)
        self.gold.update(item.label for item in gold)
        self.tp.update(gold[g].label for _, g in max_matching(len(pred), len(gold), compatible))

    def report(self) -> TaskReport:
        overall = Scores.from_counts(sum(self.tp.values()), sum(self.pred.values()), sum(self.gold.values()))
        labels = sorted(set(self.pred) | set(self.gold))
        per_type = {label: Scores.from_counts(self.tp[label], self.pred[label], self.gold[label]) for label in labels}
        return TaskReport(overall=overall, per_type=per_type)


def evaluate(pairs: Iterable[tuple[Result, Result]], mode: MatchMode = "exact",
             tasks: Sequence[Task] | None = None) -> Report:
    """Score (gold, prediction) pairs; `tasks` defaults to the union of the gold results' `tasks`."""
    pairs = list(pairs)
    if tasks is None:
        wanted = {task for gold, _ in pairs for task in gold.tasks}
        tasks = [task for task in TASK_PARTS if task in wanted]
    parts = [part for task in tasks for part in TASK_PARTS[task]]
    tallies = {part: _Tally() for part in parts}
    for gold, pred in pairs:
        for part, tally in tallies.items():
            tally.add(_items(gold, part), _items(pred, part), mode)
    return Report(mode=mode, n_examples=len(pairs), tasks={part: tally.report() for part, tally in tallies.items()})


# ---------------------------------------------------------------------------------------------------------------
# MNRE: relation classification given the entity pair
# ---------------------------------------------------------------------------------------------------------------


def relation_classification_scores(gold_labels: Sequence[str], pred_labels: Sequence[str],
                                   none_label: str = NO_RELATION) -> Scores:
    """Micro P/R/F1 over labels other than `none_label` (the MNRE metric): a pair counts when both labels agree."""
    if len(gold_labels) != len(pred_labels):
        raise ValueError(f"{len(gold_labels)} gold labels but {len(pred_labels)} predicted labels")
    tp = sum(1 for g, p in zip(gold_labels, pred_labels, strict=True) if g == p and g != none_label)
    n_pred = sum(1 for p in pred_labels if p != none_label)
    n_gold = sum(1 for g in gold_labels if g != none_label)
    return Scores.from_counts(tp, n_pred, n_gold)


def pair_label(pred: Result, head: Mention, tail: Mention, mode: MatchMode = "exact",
               none_label: str = NO_RELATION) -> str:
    """Type of the first predicted relation from `head` to `tail` (matched under `mode`), else `none_label`."""
    for relation in pred.relations:
        if mentions_match(relation.head, head, mode) and mentions_match(relation.tail, tail, mode):
            return relation.type
    return none_label


def mnre_scores(pairs: Iterable[tuple["Example", Result]], mode: MatchMode = "exact") -> Scores:
    """Relation classification of MNRE examples (pair in `meta["head"]`/`meta["tail"]`) from predicted Results."""
    gold_labels, pred_labels = [], []
    for example, pred in pairs:
        head = Mention.model_validate(example.meta["head"])
        tail = Mention.model_validate(example.meta["tail"])
        gold_labels.append(str(example.meta["relation"]))
        pred_labels.append(pair_label(pred, head, tail, mode))
    return relation_classification_scores(gold_labels, pred_labels)
