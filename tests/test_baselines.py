"""Baselines: spaCy NER spans slice to their text and score plausibly on GMNER; the majority relation on MNRE."""

from __future__ import annotations

import pytest
from reamo.eval.baselines import ACE_TYPE_MAP, MajorityRelation, SpacyNer, choose_majority_relation
from reamo.eval.metrics import evaluate, mnre_scores

from reamo.datasets import Example, read_gmner, read_m2e2, read_mnre
from reamo.schema import Result


def _example(text: str, source: str, tasks: list[str]) -> Example:
    """An input the test makes (no dataset needed)."""
    return Example(id=f"{source}:test:1", text=text, gold=Result(text=text, tasks=tasks), source=source, split="dev")


@pytest.fixture(scope="module")
def gmner100():
    return read_gmner("dev", limit=100)


@pytest.mark.needs_data
def test_spacy_spans_slice_to_their_text_and_score_on_gmner(gmner100) -> None:
    preds = SpacyNer().predict_batch(gmner100)
    assert sum(len(p.entities) for p in preds) > 50
    for example, pred in zip(gmner100, preds, strict=True):
        for entity in pred.entities:
            assert example.text[entity.span.start : entity.span.end] == entity.text
            assert entity.type in {"PER", "LOC", "ORG", "OTHER"}
    # measured 0.425 exact / 0.557 relaxed on these 100 tweets
    assert evaluate([(e.gold, p) for e, p in zip(gmner100, preds)], "exact", ["ner"]).f1("ner") > 0.35
    assert evaluate([(e.gold, p) for e, p in zip(gmner100, preds)], "relaxed", ["ner"]).f1("ner") > 0.45


def test_spacy_mapping_drops_numeric_types() -> None:
    example = _example("Apple paid 5 billion dollars to Tim Cook in London on Monday .", "gmner", ["ner"])
    pred = SpacyNer()(example)
    assert {(e.text, e.type) for e in pred.entities} >= {("Tim Cook", "PER"), ("London", "LOC")}
    assert not any(ch.isdigit() for e in pred.entities for ch in e.text)  # MONEY / DATE / CARDINAL dropped


@pytest.mark.needs_data
def test_spacy_on_m2e2_uses_ace_types() -> None:
    examples = read_m2e2("dev", limit=30)
    preds = SpacyNer.for_dataset("m2e2").predict_batch(examples)
    types = {e.type for p in preds for e in p.entities}
    assert types and types <= set(ACE_TYPE_MAP.values())
    assert evaluate([(e.gold, p) for e, p in zip(examples, preds)], "exact", ["ner"]).f1("ner") > 0.2


@pytest.mark.needs_data
def test_majority_relation_from_train_and_its_val_score() -> None:
    baseline = MajorityRelation()
    assert baseline.label == "/per/per/peer"  # 960 of 12,247 train pairs, the most frequent non-None
    val = read_mnre("val")
    scores = mnre_scores([(e, baseline(e)) for e in val])
    # predicts peer for all 1,624 pairs: 120 right, 624 gold non-None pairs
    assert (scores.tp, scores.n_pred, scores.n_gold) == (120, 1624, 624)
    assert scores.f1 == pytest.approx(2 * (120 / 1624) * (120 / 624) / (120 / 1624 + 120 / 624))


def test_choose_majority_prefers_none_only_when_nothing_else() -> None:
    assert choose_majority_relation(["None", "None", "a", "b", "b"]) == "b"
    assert choose_majority_relation(["None", "None"]) == "None"
    pair = _example("Rafael Nadal and Mery Perello in Mallorca", "mnre", ["re"])
    assert MajorityRelation(["None"])(pair) == Result(text=pair.text, tasks=["re"])
