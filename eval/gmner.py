"""GMNER scoring (Yu et al., ACL 2023): (entity span, type, image region) triples, plus the MNER and EEG sub-tasks.

* GMNER: span and type match, and the region is right: for a groundable gold entity (one with gold `ImageRegion`s)
  the predicted box has IoU >= `iou_threshold` (0.5) with at least one of its gold boxes; for an ungroundable one
  the prediction has no image box (a `NoRegion`, or no image grounding at all).
* MNER: span + type.  EEG (entity extraction and grounding): span + region, type ignored.

A prediction's region is its first `ImageRegion` (a prediction listing both a box and a NoRegion counts as
grounded). IoU is compared with a 1e-9 tolerance so a box at exactly 0.5 passes despite float rounding.
Predictions and gold pair one-to-one per example by maximum matching (`reamo.eval.metrics.max_matching`).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

from reamo.eval.metrics import MatchMode, Scores, max_matching, mentions_match
from reamo.schema import Box, Entity, ImageRegion, Result

IOU_THRESHOLD = 0.5
_TOLERANCE = 1e-9


class GmnerReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gmner: Scores
    mner: Scores
    eeg: Scores
    n_examples: int


def predicted_box(entity: Entity) -> Box | None:
    """The box a prediction grounds the entity to, or None for "no region"."""
    for grounding in entity.groundings:
        if isinstance(grounding, ImageRegion):
            return grounding.box
    return None


def gold_boxes(entity: Entity) -> list[Box]:
    """All gold boxes of an entity; empty means ungroundable."""
    return [g.box for g in entity.groundings if isinstance(g, ImageRegion)]


def region_correct(pred: Entity, gold: Entity, iou_threshold: float = IOU_THRESHOLD) -> bool:
    """The GMNER region rule for one (prediction, gold) entity pair."""
    box, boxes = predicted_box(pred), gold_boxes(gold)
    if not boxes:
        return box is None
    return box is not None and max(box.iou(g) for g in boxes) >= iou_threshold - _TOLERANCE


def _matched(allowed: list[list[bool]]) -> int:
    """Size of the largest one-to-one matching in a (prediction x gold) table of allowed pairs."""
    n_gold = len(allowed[0]) if allowed else 0
    return len(max_matching(len(allowed), n_gold, lambda i, j: allowed[i][j]))


def score_gmner(pairs: Iterable[tuple[Result, Result]], iou_threshold: float = IOU_THRESHOLD,
                mode: MatchMode = "exact") -> GmnerReport:
    """GMNER, MNER and EEG micro P/R/F1 over (gold, prediction) pairs; `mode` compares entity mentions
    ("exact" char spans, "relaxed" overlap, "text" normalized text for predictions without spans)."""
    tp = {"gmner": 0, "mner": 0, "eeg": 0}
    n_pred = n_gold = n_examples = 0
    for gold, pred in pairs:
        n_examples += 1
        golds, preds = gold.entities, pred.entities
        n_gold += len(golds)
        n_pred += len(preds)
        same = [[mentions_match(p, g, mode) for g in golds] for p in preds]
        typed = [[same[i][j] and p.type == g.type for j, g in enumerate(golds)] for i, p in enumerate(preds)]
        region = [[same[i][j] and region_correct(p, g, iou_threshold) for j, g in enumerate(golds)]
                  for i, p in enumerate(preds)]
        both = [[t and r for t, r in zip(ts, rs, strict=True)] for ts, rs in zip(typed, region, strict=True)]
        for name, allowed in (("mner", typed), ("eeg", region), ("gmner", both)):
            tp[name] += _matched(allowed)
    return GmnerReport(n_examples=n_examples,
                       **{name: Scores.from_counts(count, n_pred, n_gold) for name, count in tp.items()})
