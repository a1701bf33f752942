"""GMNER triple scoring (reamo.eval.gmner): the IoU 0.5 boundary, several gold boxes, ungroundable entities."""

from __future__ import annotations

import pytest

from reamo.datasets import read_gmner
from reamo.eval.gmner import region_correct, score_gmner
from reamo.schema import Box, Entity, ImageRegion, NoRegion, Result, TextSpan

from conftest import data_dir

DATA = data_dir()  # $REAMO_DATA_DIR or ../shared/data
TEXT = "Taylor Swift and Ed Sheeran in London"


def entity(text: str, type_: str, *regions: tuple[float, float, float, float] | None) -> Entity:
    """Entity of TEXT; each region is a box, None adds a NoRegion; no regions means no image grounding at all."""
    start = TEXT.index(text)
    groundings = [NoRegion(modality="image") if r is None else ImageRegion(box=Box(x1=r[0], y1=r[1], x2=r[2], y2=r[3]))
                  for r in regions]
    return Entity(text=text, type=type_, span=TextSpan(start=start, end=start + len(text)), groundings=groundings)


def test_iou_exactly_at_threshold_counts() -> None:
    gold = entity("Taylor Swift", "PER", (0, 0, 10, 10))
    assert region_correct(entity("Taylor Swift", "PER", (0, 0, 10, 5)), gold)  # IoU = 50 / 100 = 0.5
    assert not region_correct(entity("Taylor Swift", "PER", (0, 0, 10, 4.9)), gold)  # 0.49
    assert region_correct(entity("Taylor Swift", "PER", (0, 0, 10, 5)), entity("Taylor Swift", "PER", (0, 0, 10, 10)),
                          iou_threshold=0.5)
    assert not region_correct(entity("Taylor Swift", "PER", (0, 0, 10, 5)), gold, iou_threshold=0.6)


def test_any_of_several_gold_boxes() -> None:
    gold = entity("Taylor Swift", "PER", (0, 0, 10, 10), (100, 100, 110, 110))
    assert region_correct(entity("Taylor Swift", "PER", (100, 100, 110, 110)), gold)
    assert region_correct(entity("Taylor Swift", "PER", (0, 0, 10, 10)), gold)
    assert not region_correct(entity("Taylor Swift", "PER", (50, 50, 60, 60)), gold)
    assert not region_correct(entity("Taylor Swift", "PER", None), gold)  # "no region" for a groundable entity
    assert not region_correct(entity("Taylor Swift", "PER"), gold)


def test_ungroundable_needs_no_box() -> None:
    gold = entity("London", "LOC", None)
    assert region_correct(entity("London", "LOC", None), gold)
    assert region_correct(entity("London", "LOC"), gold)  # no image grounding at all also means no region
    assert not region_correct(entity("London", "LOC", (0, 0, 5, 5)), gold)
    # the first ImageRegion is the prediction even when a NoRegion is listed too
    assert not region_correct(entity("London", "LOC", None, (0, 0, 5, 5)), gold)


def test_gmner_mner_eeg_counts() -> None:
    gold = Result(text=TEXT, tasks=["ner"], entities=[
        entity("Taylor Swift", "PER", (0, 0, 10, 10)),
        entity("Ed Sheeran", "PER", (20, 0, 30, 10), (40, 0, 50, 10)),
        entity("London", "LOC", None),
    ])
    pred = Result(text=TEXT, entities=[
        entity("Taylor Swift", "PER", (0, 0, 10, 5)),   # all right (IoU 0.5)
        entity("Ed Sheeran", "ORG", (40, 0, 50, 10)),   # wrong type, right second box: EEG only
        entity("London", "LOC", (0, 0, 5, 5)),          # right type, box for an ungroundable entity: MNER only
        entity("Swift", "PER", None),                   # wrong span
    ])
    report = score_gmner([(gold, pred)])
    assert (report.gmner.tp, report.gmner.n_pred, report.gmner.n_gold) == (1, 4, 3)
    assert (report.mner.tp, report.eeg.tp) == (2, 2)
    assert report.gmner.precision == pytest.approx(1 / 4) and report.gmner.recall == pytest.approx(1 / 3)
    assert report.gmner.f1 == pytest.approx(2 / 7)
    assert report.mner.f1 == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert report.n_examples == 1
    empty = score_gmner([(gold, Result(text=TEXT))])
    assert (empty.gmner.tp, empty.gmner.n_pred, empty.gmner.n_gold, empty.gmner.f1) == (0, 0, 3, 0.0)


def test_text_mode_matches_predictions_without_spans() -> None:
    gold = Result(text=TEXT, entities=[entity("London", "LOC", None)])
    pred = Result(text=TEXT, entities=[Entity(text="london", type="LOC")])
    assert score_gmner([(gold, pred)]).gmner.tp == 0
    assert score_gmner([(gold, pred)], mode="text").gmner.tp == 1


@pytest.mark.needs_data
def test_real_gmner_dev_gold_and_text_only_baseline() -> None:
    dev = read_gmner("dev", root=DATA)
    perfect = score_gmner([(ex.gold, ex.gold) for ex in dev])
    assert perfect.gmner.f1 == perfect.mner.f1 == perfect.eeg.f1 == 1.0
    # Right entities but "no region" for all: only the 2450 - 991 ungroundable entities count as GMNER hits.
    text_only = [(ex.gold, ex.gold.model_copy(update={"entities": [
        e.model_copy(update={"groundings": [NoRegion(modality="image")]}) for e in ex.gold.entities]}))
        for ex in dev]
    report = score_gmner(text_only)
    assert (report.gmner.tp, report.gmner.n_gold, report.mner.tp) == (1459, 2450, 2450)
    assert report.gmner.recall == pytest.approx(1459 / 2450)
