"""Span-offset P/R/F1 (reamo.eval.metrics) and grounding IoUs (reamo.eval.grounding) on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from reamo.datasets import read_m2e2, read_mnre
from reamo.eval.grounding import (
    box_iou,
    grounding_iou,
    image_miou,
    mask_iou,
    match_masks,
    region_iou,
    span_iou,
    video_jaccard,
)
from reamo.eval.metrics import (
    Scores,
    evaluate,
    mnre_scores,
    normalize_text,
    relation_classification_scores,
)
from reamo.schema import (
    Argument,
    Box,
    Entity,
    Event,
    ImageRegion,
    Mask,
    Mention,
    NoRegion,
    Relation,
    Result,
    TextSpan,
    TimeSpan,
    Track,
    TrackFrame,
)

from conftest import data_dir

DATA = data_dir()  # $REAMO_DATA_DIR or ../shared/data
TEXT = "Rafael Nadal beat Novak Djokovic in Paris ."


def m(text: str, start: int | None = None) -> Mention:
    """Mention of `text` at its first occurrence in TEXT (or at `start`); start=-1 means no span."""
    if start == -1:
        return Mention(text=text)
    begin = TEXT.index(text) if start is None else start
    return Mention(text=text, span=TextSpan(start=begin, end=begin + len(text)))


def ent(text: str, type_: str, start: int | None = None) -> Entity:
    mention = m(text, start)
    return Entity(text=mention.text, span=mention.span, type=type_)


def approx(scores: Scores, p: float, r: float, f: float) -> bool:
    return scores.precision == pytest.approx(p) and scores.recall == pytest.approx(r) and scores.f1 == pytest.approx(f)


# -- NER ---------------------------------------------------------------------------------------------------------


GOLD_NER = Result(text=TEXT, tasks=["ner"], entities=[ent("Rafael Nadal", "PER"), ent("Paris", "LOC")])
PRED_NER = Result(text=TEXT, entities=[ent("Nadal", "PER"), ent("Paris", "LOC"), ent("Paris", "ORG")])


def test_ner_exact_vs_relaxed() -> None:
    exact = evaluate([(GOLD_NER, PRED_NER)], mode="exact")
    assert list(exact.tasks) == ["ner"]  # tasks come from gold.tasks
    ner = exact.tasks["ner"].overall
    assert (ner.tp, ner.n_pred, ner.n_gold) == (1, 3, 2)
    assert approx(ner, 1 / 3, 1 / 2, 0.4)
    relaxed = evaluate([(GOLD_NER, PRED_NER)], mode="relaxed").tasks["ner"].overall
    assert (relaxed.tp, relaxed.n_pred, relaxed.n_gold) == (2, 3, 2)
    assert approx(relaxed, 2 / 3, 1.0, 0.8)


def test_ner_per_type_breakdown() -> None:
    per_type = evaluate([(GOLD_NER, PRED_NER)]).tasks["ner"].per_type
    assert set(per_type) == {"PER", "LOC", "ORG"}
    assert (per_type["PER"].tp, per_type["PER"].n_pred, per_type["PER"].n_gold) == (0, 1, 1)
    assert approx(per_type["LOC"], 1.0, 1.0, 1.0)
    assert (per_type["ORG"].tp, per_type["ORG"].n_pred, per_type["ORG"].n_gold, per_type["ORG"].f1) == (0, 1, 0, 0.0)


def test_duplicates_count_once_and_relaxed_uses_maximum_matching() -> None:
    twice = Result(text=TEXT, entities=[ent("Paris", "LOC"), ent("Paris", "LOC")])
    gold = Result(text=TEXT, tasks=["ner"], entities=[ent("Paris", "LOC")])
    assert evaluate([(gold, twice)]).tasks["ner"].overall.model_dump() == Scores.from_counts(1, 2, 1).model_dump()
    # gold "Rafael" [0,6) and "Nadal" [7,12); pred "Rafael Nadal" overlaps both, "Raf" [0,3) only the first.
    # A greedy pass that gives "Rafael Nadal" to "Rafael" leaves 1 match; the maximum matching finds 2.
    gold2 = Result(text=TEXT, tasks=["ner"], entities=[ent("Rafael", "PER"), ent("Nadal", "PER")])
    pred2 = Result(text=TEXT, entities=[ent("Rafael Nadal", "PER"), ent("Raf", "PER")])
    assert evaluate([(gold2, pred2)], mode="relaxed").tasks["ner"].overall.tp == 2


def test_empty_predictions_and_empty_gold() -> None:
    empty = Result(text=TEXT, tasks=["ner"])
    none = evaluate([(GOLD_NER, empty)]).tasks["ner"].overall
    assert (none.tp, none.n_pred, none.n_gold, none.precision, none.recall, none.f1) == (0, 0, 2, 0.0, 0.0, 0.0)
    spurious = evaluate([(empty, PRED_NER)]).tasks["ner"].overall
    assert (spurious.tp, spurious.n_pred, spurious.n_gold, spurious.f1) == (0, 3, 0, 0.0)
    both = evaluate([(empty, empty)]).tasks["ner"].overall
    assert (both.n_pred, both.n_gold, both.f1) == (0, 0, 0.0)


def test_text_mode_for_predictions_without_spans() -> None:
    gold = Result(text="Israel 's court", tasks=["ner"],
                  entities=[Entity(text="Israel 's", type="GPE", span=TextSpan(start=0, end=9))])
    pred = Result(text="Israel 's court", entities=[Entity(text="ISRAEL\u2019s", type="GPE")])
    assert normalize_text("Israel 's") == normalize_text("ISRAEL\u2019s") == "israel's"
    assert evaluate([(gold, pred)], mode="exact").f1("ner") == 0.0  # no span, no exact match
    assert evaluate([(gold, pred)], mode="text").f1("ner") == 1.0


# -- RE / EE -----------------------------------------------------------------------------------------------------


def test_relations_need_both_spans_direction_and_type() -> None:
    gold = Result(text=TEXT, tasks=["re"], relations=[
        Relation(head=m("Rafael Nadal"), type="beat", tail=m("Novak Djokovic")),
        Relation(head=m("Rafael Nadal"), type="located_in", tail=m("Paris")),
    ])
    pred = Result(text=TEXT, relations=[
        Relation(head=m("Rafael Nadal"), type="beat", tail=m("Novak Djokovic")),   # right
        Relation(head=m("Paris"), type="located_in", tail=m("Rafael Nadal")),      # reversed
        Relation(head=m("Nadal"), type="located_in", tail=m("Paris")),             # head only overlaps
    ])
    exact = evaluate([(gold, pred)]).tasks["re"]
    assert (exact.overall.tp, exact.overall.n_pred, exact.overall.n_gold) == (1, 3, 2)
    assert exact.per_type["beat"].f1 == 1.0 and exact.per_type["located_in"].tp == 0
    relaxed = evaluate([(gold, pred)], mode="relaxed").tasks["re"]
    assert relaxed.overall.tp == 2 and relaxed.per_type["located_in"].tp == 1


def test_events_trigger_and_argument_scores() -> None:
    gold = Result(text=TEXT, tasks=["ee"], events=[Event(type="Conflict:Attack", trigger=m("beat"), arguments=[
        Argument(role="Attacker", entity=m("Rafael Nadal")),
        Argument(role="Target", entity=m("Novak Djokovic")),
        Argument(role="Place", entity=m("Paris")),
    ])])
    pred = Result(text=TEXT, events=[
        Event(type="Conflict:Attack", trigger=m("in"), arguments=[        # wrong trigger, args still count
            Argument(role="Attacker", entity=m("Rafael Nadal")),
            Argument(role="Victim", entity=m("Novak Djokovic")),           # wrong role
        ]),
        Event(type="Movement:Transport", trigger=m("beat"), arguments=[   # wrong event type
            Argument(role="Place", entity=m("Paris")),
        ]),
    ])
    report = evaluate([(gold, pred)])
    assert list(report.tasks) == ["et", "ea"]
    et, ea = report.tasks["et"], report.tasks["ea"]
    assert (et.overall.tp, et.overall.n_pred, et.overall.n_gold) == (0, 2, 1)
    assert (ea.overall.tp, ea.overall.n_pred, ea.overall.n_gold) == (1, 3, 3)
    assert approx(ea.overall, 1 / 3, 1 / 3, 1 / 3)
    assert set(ea.per_type) == {"Attacker", "Target", "Victim", "Place"} and ea.per_type["Attacker"].f1 == 1.0
    relaxed_trigger = Result(text=TEXT, events=[Event(type="Conflict:Attack", trigger=m("bea", TEXT.index("beat")))])
    assert evaluate([(gold, relaxed_trigger)], mode="relaxed").tasks["et"].overall.tp == 1
    assert evaluate([(gold, relaxed_trigger)], mode="exact").tasks["et"].overall.tp == 0


@pytest.mark.needs_data
def test_gold_against_itself_on_real_m2e2_dev() -> None:
    dev = read_m2e2("dev", root=DATA)
    report = evaluate([(ex.gold, ex.gold) for ex in dev])
    assert set(report.tasks) == {"ner", "et", "ea"}
    assert all(task.overall.f1 == 1.0 for task in report.tasks.values())
    assert report.tasks["et"].overall.n_gold == 173
    empty = evaluate([(ex.gold, Result(text=ex.text)) for ex in dev])
    assert all(task.overall.f1 == 0.0 for task in empty.tasks.values())


# -- MNRE relation classification ----------------------------------------------------------------------------------


def test_relation_classification_excludes_none() -> None:
    gold = ["/per/per/peer", "None", "/per/org/member_of", "/per/per/peer"]
    pred = ["/per/per/peer", "/per/per/peer", "None", "/per/org/member_of"]
    scores = relation_classification_scores(gold, pred)
    assert (scores.tp, scores.n_pred, scores.n_gold) == (1, 3, 3)
    assert approx(scores, 1 / 3, 1 / 3, 1 / 3)
    with pytest.raises(ValueError, match="3 gold labels but 2"):
        relation_classification_scores(gold[:3], pred[:2])


@pytest.mark.needs_data
def test_mnre_scores_from_results_on_real_pairs() -> None:
    val = read_mnre("val", root=DATA, limit=200)
    n_gold = sum(1 for ex in val if ex.meta["relation"] != "None")
    perfect = mnre_scores([(ex, ex.gold) for ex in val])
    assert (perfect.tp, perfect.n_gold, perfect.f1) == (n_gold, n_gold, 1.0)
    swapped = [(ex, Result(text=ex.text, relations=[Relation(head=r.tail, type=r.type, tail=r.head)
                                                     for r in ex.gold.relations])) for ex in val]
    assert mnre_scores(swapped).tp == 0  # direction matters
    assert mnre_scores([(ex, Result(text=ex.text)) for ex in val]).n_pred == 0


# -- grounding -----------------------------------------------------------------------------------------------------


def _mask(rows: slice, cols: slice, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    array = np.zeros(shape, dtype=bool)
    array[rows, cols] = True
    return array


LEFT = _mask(slice(None), slice(0, 2))
TOP = _mask(slice(0, 2), slice(None))
BOTTOM_RIGHT = _mask(slice(3, 4), slice(3, 4))


def test_mask_and_box_iou() -> None:
    assert mask_iou(LEFT, TOP) == pytest.approx(4 / 12)
    assert mask_iou(Mask.from_array(LEFT), LEFT) == 1.0
    assert mask_iou(LEFT * 0.9, LEFT) == 1.0  # probabilities are binarized at 0.5
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(Box(x1=0, y1=0, x2=1, y2=1), Box(x1=2, y1=2, x2=3, y2=3)) == 0.0


def test_hungarian_more_predictions_than_gold() -> None:
    matching = match_masks([BOTTOM_RIGHT, TOP, LEFT], [LEFT])
    assert sorted(matching.pairs, key=str) == sorted([(2, 0), (0, None), (1, None)], key=str)
    assert matching.miou == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3


def test_hungarian_more_gold_than_predictions_and_order() -> None:
    matching = match_masks([TOP], [LEFT, TOP])
    assert sorted(matching.pairs, key=str) == sorted([(0, 1), (None, 0)], key=str)
    assert matching.miou == pytest.approx(0.5)
    assert image_miou([TOP, LEFT], [LEFT, TOP]) == 1.0
    # TOP-TOP (IoU 1) + LEFT-column0 (0.5) beats the crossed pairing LEFT-TOP (1/3) + TOP-column0 (0.2)
    assert image_miou([LEFT, TOP], [TOP, _mask(slice(None), slice(0, 1))]) == pytest.approx((1.0 + 0.5) / 2)


def test_empty_sides() -> None:
    assert image_miou([], [LEFT]) == 0.0
    assert image_miou([LEFT, TOP], []) == 0.0
    assert image_miou([], []) == 1.0  # both say "no region"
    with pytest.raises(ValueError, match="same shape"):
        image_miou([LEFT], [np.zeros((5, 5), dtype=bool)])


def _track(boxes: dict[int, tuple[float, float, float, float]]) -> Track:
    return Track(frames=[TrackFrame(frame_index=i, time=i / 10, box=Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]))
                         for i, b in sorted(boxes.items())])


def test_video_jaccard_counts_missing_frames_as_zero() -> None:
    gold = _track({0: (0, 0, 10, 10), 1: (0, 0, 10, 10), 2: (0, 0, 10, 10)})
    pred = _track({1: (0, 0, 10, 10), 2: (5, 0, 15, 10), 3: (0, 0, 10, 10)})
    assert video_jaccard(pred, gold) == pytest.approx((0 + 1 + 1 / 3 + 0) / 4)
    assert video_jaccard(gold, gold) == 1.0
    assert video_jaccard(None, NoRegion(modality="video")) == 1.0
    assert video_jaccard(pred, None) == 0.0 and video_jaccard(NoRegion(modality="video"), gold) == 0.0
    masked = Track(frames=[TrackFrame(frame_index=0, time=0, box=Box(x1=0, y1=0, x2=4, y2=4),
                                      mask=Mask.from_array(LEFT))])
    masked_top = Track(frames=[TrackFrame(frame_index=0, time=0, box=Box(x1=0, y1=0, x2=4, y2=4),
                                          mask=Mask.from_array(TOP))])
    assert video_jaccard(masked, masked_top) == pytest.approx(1 / 3)  # masks win over (equal) boxes


def test_audio_span_iou_and_ungroundable_rules() -> None:
    assert span_iou(TimeSpan(start=0, end=2), TimeSpan(start=1, end=3)) == pytest.approx(1 / 3)
    assert span_iou(NoRegion(modality="audio"), None) == 1.0
    assert span_iou(TimeSpan(start=0, end=2), NoRegion(modality="audio")) == 0.0
    region = ImageRegion(box=Box(x1=0, y1=0, x2=10, y2=10))
    assert region_iou(region, ImageRegion(box=Box(x1=5, y1=0, x2=15, y2=10))) == pytest.approx(1 / 3)
    assert grounding_iou(NoRegion(modality="image"), NoRegion(modality="image")) == 1.0
    assert grounding_iou(region, NoRegion(modality="image")) == 0.0
    assert grounding_iou(TimeSpan(start=0, end=1), TimeSpan(start=0, end=1)) == 1.0
    with pytest.raises(ValueError, match="cannot compare"):
        grounding_iou(region, TimeSpan(start=0, end=1))
