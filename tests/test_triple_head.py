"""The triple head: full triples are decided by it (not by the relation head, which only knows given pairs in their
annotated direction) where it has a calibrated margin; fitting asks every pair of a sentence's annotated entities
both ways, labelled with the relation the sentence states from that head to that tail (a symmetric one both ways);
triple calibration compares it with rank classification and puts both heads back; `reamo fit-triple-head` writes a
head the model folder loads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import run_cli
from test_relation_head import (  # the same sentence, tiny agent fixture and fixed-logit heads
    LABELS,
    RAW,
    RELATIONS,
    TEXT,
    agent,  # noqa: F401 - a fixture
    pair_head,
)

from reamo.agent import Agent, AgentSettings
from reamo.datasets import Example
from reamo.schema import Mention, Relation, Result

ALIASES = {"couple": "/per/per/couple", "member_of": "/per/org/member_of"}


def triples(agent: Agent) -> set[tuple[str, str, str, float]]:
    request = agent.prepare(TEXT, tasks=("ner", "re"), labels=LABELS)
    relations = agent.finish(request, [RAW]).relations
    return {(r.head.text, r.type, r.tail.text, round(r.score or 0.0, 3)) for r in relations}


def test_full_triples_use_the_triple_head_before_the_relation_head(agent: Agent) -> None:
    old = agent.settings.model_copy(), agent.relation_head, agent.triple_head
    hidden = agent.model.llm.config.hidden_size
    try:
        agent.settings.triple_none_bias, agent.settings.triple_head_none_bias = 1e9, 0.0
        agent.relation_head = pair_head(hidden, [0.0, -1.0, 5.0])  # member_of by 5
        assert triples(agent) == {("Rafael Nadal", "member_of", "Mery Perello", 5.0),  # without a triple head
                                  ("Rafael Nadal", "member_of", "Paris", 5.0),
                                  ("Mery Perello", "member_of", "Paris", 5.0)}
        agent.triple_head = pair_head(hidden, [0.0, 3.0, -2.0])  # couple by 3: it decides, not the relation head
        assert triples(agent) == {("Rafael Nadal", "couple", "Mery Perello", 3.0),
                                  ("Rafael Nadal", "couple", "Paris", 3.0), ("Mery Perello", "couple", "Paris", 3.0)}
        agent.settings.triple_head_none_bias = 3.5  # the triple head's own threshold
        assert triples(agent) == set()
        agent.settings.triple_none_bias, agent.settings.triple_head_none_bias = -1e9, None  # no calibrated margin
        by_ranking = triples(agent)
        assert by_ranking and all(score not in (3.0, 5.0) for *_, score in by_ranking)
        # given pairs stay with the relation head
        agent.settings.pair_none_bias, agent.settings.pair_head_none_bias = 1e9, 0.0
        given = agent.extract(TEXT, tasks=("re",), labels=LABELS, pairs=[("Rafael Nadal", "Mery Perello")])
        assert [(r.type, round(r.score or 0.0, 3)) for r in given.relations] == [("member_of", 5.0)]
    finally:
        agent.settings, agent.relation_head, agent.triple_head = old


def mnre_line(n: int, head: str, relation: str, tail: str, text: str = TEXT) -> Example:
    spans = {name: {"text": name, "span": {"start": text.index(name), "end": text.index(name) + len(name)}}
             for name in (head, tail)}
    relations = [] if relation == "None" else [Relation(head=Mention.model_validate(spans[head]), type=relation,
                                                        tail=Mention.model_validate(spans[tail]))]
    return Example(id=f"mnre:train:{n}", text=text, gold=Result(relations=relations), source="mnre", split="train",
                   meta={"head": spans[head], "tail": spans[tail], "relation": relation})


LINES = [mnre_line(0, "Rafael Nadal", "/per/per/couple", "Mery Perello"),
         mnre_line(1, "Mery Perello", "/per/org/member_of", "Paris"),
         mnre_line(2, "Rafael Nadal", "None", "Paris")]


def test_annotated_sentences_join_a_sentences_lines() -> None:
    from reamo.tuning.heads import annotated_sentences

    other = mnre_line(3, "Rafael Nadal", "None", "Paris", "Rafael Nadal left Paris.")
    sentences = annotated_sentences([*LINES, other])
    assert len(sentences) == 2
    first = sentences[0].gold
    assert [e.text for e in first.entities] == ["Rafael Nadal", "Mery Perello", "Paris"]
    assert [(r.head.text, r.type, r.tail.text) for r in first.relations] == [
        ("Rafael Nadal", "/per/per/couple", "Mery Perello"), ("Mery Perello", "/per/org/member_of", "Paris")]
    assert sentences[1].gold.relations == [] and len(sentences[1].gold.entities) == 2


def test_fit_triple_head_labels_every_ordered_pair(agent: Agent) -> None:
    from reamo.decisions import triple_items
    from reamo.tuning.heads import annotated_sentences, fit_triple_head, triple_states

    sentence = annotated_sentences(LINES)
    states, targets = triple_states(agent, sentence, RELATIONS, layer=1, aliases=ALIASES)
    request = agent.prepare(TEXT, tasks=("ner", "re"), labels=LABELS)
    _, asked = triple_items(agent, request, sentence[0].gold.entities, by_type=False)
    labelled = {(head.text, tail.text): target for (_, head, tail, _, _), target in zip(asked, targets, strict=True)}
    # couple is symmetric: both ways; member_of only from its head; the unrelated pair and the reversal: None
    assert labelled == {("Rafael Nadal", "Mery Perello"): "couple", ("Mery Perello", "Rafael Nadal"): "couple",
                        ("Mery Perello", "Paris"): "member_of", ("Paris", "Mery Perello"): None,
                        ("Rafael Nadal", "Paris"): None, ("Paris", "Rafael Nadal"): None}
    assert states.shape == (6, agent.model.llm.config.hidden_size)
    assert not torch.allclose(states[0], states[1])  # a pair asked the other way round is another question
    head = fit_triple_head(agent, sentence * 2, RELATIONS, layer=1)
    assert head.config.labels == ["None", *RELATIONS] and head.config.answer_start == "Relations:"
    assert head.config.n_examples == 12 and head.config.n_positive == 6
    with pytest.raises(ValueError, match="entity pairs a sentence relates and pairs it does not"):
        fit_triple_head(agent, annotated_sentences(LINES[2:]), RELATIONS, layer=1)


def test_triple_calibration_compares_the_triple_head_and_puts_both_heads_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reamo.eval import calibrate

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a"})
    monkeypatch.setattr(calibrate, "held_out_mnre_sentences", lambda excluded, limit, seed=0: ["s"])
    relation_head, triple_head = (SimpleNamespace(config=SimpleNamespace(layer=layer)) for layer in (20, 28))
    agent = SimpleNamespace(relation_head=relation_head, triple_head=triple_head, settings=SimpleNamespace(
        triple_none_bias=None, triple_head_none_bias=None))
    seen = []

    def triples(agent, examples):
        seen.append((agent.triple_head, agent.relation_head, agent.settings.triple_head_none_bias))
        margin = 2.0 if agent.triple_head is not None else -2.0
        return [([(margin, True), (margin - 1.0, False)], 1)]

    monkeypatch.setattr(calibrate, "score_triples", triples)
    out = tmp_path / "settings.json"
    result = calibrate.calibrate_triples(agent, [tmp_path / "r.yaml"], out)
    assert seen == [(triple_head, relation_head, -1e9), (None, None, -1e9)]  # the ranking pass uses no head at all
    assert agent.triple_head is triple_head and agent.relation_head is relation_head
    assert agent.settings.triple_head_none_bias is None
    written = json.loads(out.read_text())
    assert 1.0 <= written["triple_head_none_bias"] < 2.0 and -3.0 <= written["triple_none_bias"] < -2.0
    assert "triple head (layer 28, `reamo fit-triple-head`)" in written["_about"]["triple_head_none_bias"]
    assert written["_about"]["triple_head_calibration"] == result["triple_head"].model_dump(mode="json")


def test_fit_triple_head_command_writes_a_head_the_model_folder_loads(tiny_model_folder: Path) -> None:
    folder = tiny_model_folder
    """`reamo fit-triple-head F --model F --limit 20`: the head lands beside the model and loads with it."""
    done = run_cli("fit-triple-head", str(folder), "--model", str(folder), "--layer", "1", "--question-end-layer",
                   "2", "--limit", "20")
    assert done.exit_code == 0, done.output
    loaded = Agent.from_pretrained(str(folder))
    head = loaded.triple_head
    assert head is not None and loaded.relation_head is None and head.config.layer == 1
    assert [(r.layer, r.at) for r in head.config.reads] == [(1, "answer_start"), (2, "question_end")]
    assert head.config.n_examples > 20 > head.config.n_positive > 0  # a sentence has several ordered pairs
    assert "20 MNRE train sentences" in head.config.fitted_on and "member_of" in head.config.labels


def test_the_triples_report_says_which_head_decided() -> None:
    from reamo.eval.runner import _triple_notes

    hidden = 8
    triple_head, relation_head = pair_head(hidden, [0.0, 0.0, 0.0]), pair_head(hidden, [0.0, 0.0, 0.0])
    agent = SimpleNamespace(triple_head=triple_head, relation_head=relation_head)
    settings = AgentSettings(triple_none_bias=0.7, triple_head_none_bias=-1.2)
    # the head knows only couple and member_of, not MNRE's 22 relations: rank classification decides them
    assert "rank classification of the model's answers with margin 0.7" in _triple_notes(agent, settings)[0]
    from reamo.eval.runner import DATASETS

    every = ["None", *DATASETS["mnre"].labels.relation_types]
    for head in (triple_head, relation_head):
        head.config = head.config.model_copy(update={"labels": every})
    assert ("the triple head (the LLM's layer 1 at the answer start, `reamo fit-triple-head`) with margin -1.2"
            in _triple_notes(agent, settings)[0])
    agent.triple_head = None
    assert "the relation head (the LLM's layer 1 at the answer start" in _triple_notes(agent, settings)[0]
    assert "freely" in _triple_notes(agent, AgentSettings())[0]
