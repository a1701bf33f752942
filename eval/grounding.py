"""Grounding quality: image mask mIoU (Hungarian-matched), box IoU, video per-frame Jaccard, audio span IoU.

"No region" is an answer, not a missing value: when gold and prediction both say no region (a `NoRegion`, None or
an empty list) the score is 1; when only one side does it is 0.

Image mIoU follows the usual set-prediction recipe (DETR / Mask2Former matchers): predicted and gold masks are padded
with empty masks to the same count, paired by `scipy.optimize.linear_sum_assignment` on a cost of pixel BCE + Dice,
and the IoU of every pair (padding included) is averaged, so missed and extra masks both lower the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.optimize import linear_sum_assignment

from reamo.schema import Box, ImageRegion, Mask, NoRegion, TimeSpan, Track

MaskLike = Union[np.ndarray, Mask]
BoxLike = Union[Box, Sequence[float]]
_EPS = 1e-6


class MaskMatching(BaseModel):
    """Hungarian pairing of masks: `pairs[k] = (pred index, gold index)`, None for a padding mask."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[tuple[int | None, int | None]]
    ious: list[float]
    miou: float


def _as_array(mask: MaskLike) -> np.ndarray:
    """A float (H, W) array in [0, 1]; `Mask` records and bool arrays become 0/1, probabilities stay as they are."""
    array = mask.to_array() if isinstance(mask, Mask) else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {array.shape}")
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def mask_iou(pred: MaskLike, gold: MaskLike, threshold: float = 0.5) -> float:
    """IoU of two masks (probabilities binarized at `threshold`); two empty masks agree (1.0)."""
    a, b = _as_array(pred) >= threshold, _as_array(gold) >= threshold
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_iou(pred: BoxLike, gold: BoxLike) -> float:
    """IoU of two (x1, y1, x2, y2) boxes."""
    a = pred if isinstance(pred, Box) else Box(x1=pred[0], y1=pred[1], x2=pred[2], y2=pred[3])
    b = gold if isinstance(gold, Box) else Box(x1=gold[0], y1=gold[1], x2=gold[2], y2=gold[3])
    return a.iou(b)


def match_masks(pred: Sequence[MaskLike], gold: Sequence[MaskLike]) -> MaskMatching:
    """Pad both lists with empty masks to the same length, pair them by BCE + Dice cost, average the pair IoUs."""
    preds, golds = [_as_array(m) for m in pred], [_as_array(m) for m in gold]
    shapes = {m.shape for m in preds + golds}
    if len(shapes) > 1:
        raise ValueError(f"all masks of one image must have the same shape, got {sorted(shapes)}")
    n = max(len(preds), len(golds))
    if n == 0:  # both sides say "no region"
        return MaskMatching(pairs=[], ious=[], miou=1.0)
    shape = shapes.pop()
    empty = np.zeros(shape)
    p = np.stack(preds + [empty] * (n - len(preds))).reshape(n, -1)
    g = np.stack(golds + [empty] * (n - len(golds))).reshape(n, -1)
    pixels = max(p.shape[1], 1)

    # Mean pixel BCE for every (pred, gold) pair as two matrix products instead of n*n loops.
    log_p, log_not_p = np.log(np.clip(p, _EPS, 1.0)), np.log(np.clip(1.0 - p, _EPS, 1.0))
    bce = -(log_p @ g.T + log_not_p @ (1.0 - g).T) / pixels
    dice = 1.0 - (2.0 * (p @ g.T) + 1.0) / (p.sum(1)[:, None] + g.sum(1)[None, :] + 1.0)
    rows, cols = linear_sum_assignment(bce + dice)

    pairs, ious = [], []
    for r, c in zip(rows, cols, strict=True):
        pairs.append((int(r) if r < len(preds) else None, int(c) if c < len(golds) else None))
        ious.append(mask_iou(p[r].reshape(shape), g[c].reshape(shape)))
    return MaskMatching(pairs=pairs, ious=ious, miou=float(np.mean(ious)))


def image_miou(pred: Sequence[MaskLike], gold: Sequence[MaskLike]) -> float:
    """mIoU of one image's predicted masks against its gold masks (see `match_masks`)."""
    return match_masks(pred, gold).miou


def _is_none(item: object) -> bool:
    return item is None or isinstance(item, NoRegion) or (isinstance(item, Sequence) and len(item) == 0)


def _frame_iou(pred_box: Box, pred_mask: Mask | None, gold_box: Box, gold_mask: Mask | None) -> float:
    if pred_mask is not None and gold_mask is not None:
        return mask_iou(pred_mask, gold_mask)
    return pred_box.iou(gold_box)


def video_jaccard(pred: Track | NoRegion | None, gold: Track | NoRegion | None) -> float:
    """Mean per-frame Jaccard (mask IoU when both frames have masks, else box IoU) over the union of frame indices;
    a frame present on one side only scores 0."""
    pred_frames = [] if _is_none(pred) else pred.frames  # type: ignore[union-attr]
    gold_frames = [] if _is_none(gold) else gold.frames  # type: ignore[union-attr]
    if not pred_frames or not gold_frames:
        return 1.0 if not pred_frames and not gold_frames else 0.0
    p = {f.frame_index: f for f in pred_frames}
    g = {f.frame_index: f for f in gold_frames}
    scores = [
        _frame_iou(p[i].box, p[i].mask, g[i].box, g[i].mask) if i in p and i in g else 0.0
        for i in sorted(set(p) | set(g))
    ]
    return float(np.mean(scores))


def span_iou(pred: TimeSpan | NoRegion | None, gold: TimeSpan | NoRegion | None) -> float:
    """1-D IoU of two audio time spans, with the "no region" rules."""
    if _is_none(pred) or _is_none(gold):
        return 1.0 if _is_none(pred) and _is_none(gold) else 0.0
    return pred.iou(gold)  # type: ignore[union-attr]


def region_iou(pred: ImageRegion | NoRegion | None, gold: ImageRegion | NoRegion | None) -> float:
    """IoU of two image regions: masks when both have one, else boxes; with the "no region" rules."""
    if _is_none(pred) or _is_none(gold):
        return 1.0 if _is_none(pred) and _is_none(gold) else 0.0
    return _frame_iou(pred.box, pred.mask, gold.box, gold.mask)  # type: ignore[union-attr]


def grounding_iou(pred: object, gold: object) -> float:
    """IoU of any two groundings of the same modality (ImageRegion, Track, TimeSpan), NoRegion/None as no region."""
    if _is_none(pred) or _is_none(gold):
        return 1.0 if _is_none(pred) and _is_none(gold) else 0.0
    if isinstance(pred, ImageRegion) and isinstance(gold, ImageRegion):
        return region_iou(pred, gold)
    if isinstance(pred, Track) and isinstance(gold, Track):
        return video_jaccard(pred, gold)
    if isinstance(pred, TimeSpan) and isinstance(gold, TimeSpan):
        return span_iou(pred, gold)
    raise ValueError(f"cannot compare a {type(pred).__name__} with a {type(gold).__name__}")
