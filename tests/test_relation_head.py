"""The relation head: given pairs and full triples are decided by it exactly where it knows the offered relations and
has a calibrated margin (its own threshold, not rank classification's); fitting labels each MNRE pair by its gold
relation; calibration with a head writes the head's margins and the ranking's, and puts the head back."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import constant_head, run_cli

from reamo.agent import Agent, AgentSettings
from reamo.datasets import Example
from reamo.model import ReamoConfig, ReamoModel
from reamo.model.decision_heads import DecisionHead
from reamo.schema import Labels, Result
from reamo.tools.registry import ToolRegistry

TEXT = "Rafael Nadal met Mery Perello in Paris."
RAW = "Entities: (Rafael Nadal, PER)(Mery Perello, PER)(Paris, LOC)"
RELATIONS = ["couple", "member_of"]
LABELS = Labels(entity_types=["PER", "LOC"], relation_types=RELATIONS)


@pytest.fixture(scope="module")
def agent(tiny_llm_dir) -> Agent:
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    return Agent(model, registry=ToolRegistry(), settings=AgentSettings(few_shot=False, relation_type_filter=False))


def pair_head(hidden: int, logits: list[float]) -> DecisionHead:
    """A head that ignores the state: "None", "couple", "member_of" get `logits`."""
    return constant_head(hidden, ["None", *RELATIONS], logits, "Relations:")


def test_given_pairs_use_the_relation_head_where_it_knows_the_relations(agent: Agent) -> None:
    old = agent.settings.model_copy(), agent.relation_head
    try:
        # the ranking's threshold (1e9) would answer None; the head's own threshold (0) applies to the head
        agent.settings.pair_none_bias, agent.settings.pair_head_none_bias = 1e9, 0.0
        agent.relation_head = pair_head(agent.model.llm.config.hidden_size, [0.0, -1.0, 5.0])
        pair = ("Rafael Nadal", "Mery Perello")
        result = agent.extract(TEXT, tasks=("re",), labels=LABELS, pairs=[pair])
        assert [(r.head.text, r.type, r.tail.text) for r in result.relations] == [(*pair[:1], "member_of", pair[1])]
        assert result.relations[0].score == pytest.approx(5.0, abs=1e-4)
        only_couple = LABELS.model_copy(update={"relation_types": ["couple"]})
        assert agent.extract(TEXT, tasks=("re",), labels=only_couple, pairs=[pair]).relations == []  # None by 1
        agent.settings.pair_head_none_bias = 5.5
        assert agent.extract(TEXT, tasks=("re",), labels=LABELS, pairs=[pair]).relations == []
        # no calibrated head margin, or a relation the head never saw: rank classification decides, as without it
        agent.settings.pair_none_bias = -1e9
        for head_bias, labels in ((None, LABELS), (0.0, LABELS.model_copy(update={"relation_types": [
                "couple", "parent"]}))):
            agent.settings.pair_head_none_bias = head_bias
            with_head = agent.extract(TEXT, tasks=("re",), labels=labels, pairs=[pair]).relations
            head, agent.relation_head = agent.relation_head, None
            without = agent.extract(TEXT, tasks=("re",), labels=labels, pairs=[pair]).relations
            agent.relation_head = head
            assert with_head and [(r.type, r.score) for r in with_head] == [(r.type, r.score) for r in without]
            assert with_head[0].score != pytest.approx(5.0, abs=1e-4)
    finally:
        agent.settings, agent.relation_head = old


def test_full_triples_use_the_relation_head_with_its_own_margin(agent: Agent) -> None:
    old = agent.settings.model_copy(), agent.relation_head
    try:
        agent.settings.triple_none_bias, agent.settings.triple_head_none_bias = 1e9, 0.0
        request = agent.prepare(TEXT, tasks=("ner", "re"), labels=LABELS)
        assert agent.finish(request, [RAW]).relations == []  # rank classification at 1e9: nothing
        agent.relation_head = pair_head(agent.model.llm.config.hidden_size, [0.0, -1.0, 5.0])
        relations = agent.finish(request, [RAW]).relations
        # every pair of the three entities, each once (the first direction wins the tie), as member_of with 5
        assert {(r.head.text, r.tail.text) for r in relations} == {
            ("Rafael Nadal", "Mery Perello"), ("Rafael Nadal", "Paris"), ("Mery Perello", "Paris")}
        assert all(r.type == "member_of" and r.score == pytest.approx(5.0, abs=1e-4) for r in relations)
        assert all(r.head.span is not None and TEXT[r.head.span.start:r.head.span.end] == r.head.text
                   for r in relations)
        agent.settings.triple_head_none_bias = 5.5
        assert agent.finish(request, [RAW]).relations == []
        agent.settings.triple_none_bias, agent.settings.triple_head_none_bias = -1e9, None
        by_ranking = agent.finish(request, [RAW]).relations  # the head without a calibrated margin is not used
        assert by_ranking and all(r.score != pytest.approx(5.0, abs=1e-4) for r in by_ranking)
    finally:
        agent.settings, agent.relation_head = old


def mnre_line(n: int, relation: str, head: str = "Rafael Nadal", tail: str = "Mery Perello") -> Example:
    spans = {name: {"text": name, "span": {"start": TEXT.index(name), "end": TEXT.index(name) + len(name)}}
             for name in (head, tail)}
    return Example(id=f"mnre:train:{n}", text=TEXT, gold=Result(), source="mnre", split="train",
                   meta={"head": spans[head], "tail": spans[tail], "relation": relation})


def test_fit_relation_head_labels_each_pair_by_its_gold_relation(agent: Agent) -> None:
    from reamo.tuning.heads import fit_relation_head, relation_states

    examples = [mnre_line(0, "/per/per/couple"), mnre_line(1, "None"), mnre_line(2, "/per/org/member_of")]
    aliases = {"couple": "/per/per/couple", "member_of": "/per/org/member_of"}
    states, targets = relation_states(agent, examples, RELATIONS, layer=1, aliases=aliases)
    assert targets == ["couple", None, "member_of"] and states.shape == (3, agent.model.llm.config.hidden_size)
    torch.testing.assert_close(states[0], states[1])  # the same sentence and pair: the same question
    # with the pair line's last token read too: the answer start's state, then one that depends on the pair
    from reamo.model.decision_heads import StateRead

    reversed_pair = mnre_line(3, "None", head="Mery Perello", tail="Rafael Nadal")
    two, _ = relation_states(agent, [*examples, reversed_pair], RELATIONS, aliases=aliases,
                             layer=[StateRead(layer=1), StateRead(layer=1, at="question_end")])
    width = agent.model.llm.config.hidden_size
    assert two.shape == (4, 2 * width)
    torch.testing.assert_close(two[:3, :width], states, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two[0, width:], two[1, width:], rtol=1e-4, atol=1e-4)  # the same pair line
    assert not torch.allclose(two[0, width:], two[3, width:])  # the pair line names the pair in its order
    head = fit_relation_head(agent, examples * 2, ["couple", "member_of"], layer=1)
    assert head.config.labels == ["None", "couple", "member_of"] and head.config.answer_start == "Relations:"
    assert head.config.n_examples == 6 and head.config.n_positive == 4
    with pytest.raises(ValueError, match="pairs with a relation and pairs without"):
        fit_relation_head(agent, [mnre_line(0, "None")], ["couple", "member_of"], layer=1)


def test_pair_and_triple_calibration_with_a_relation_head_calibrate_both(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from reamo.eval import calibrate

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a"})
    monkeypatch.setattr(calibrate, "held_out_pairs", lambda excluded, limit, seed=0: ["p"] * 2)
    monkeypatch.setattr(calibrate, "held_out_mnre_sentences", lambda excluded, limit, seed=0: ["s"])
    head = SimpleNamespace(config=SimpleNamespace(layer=28))
    agent = SimpleNamespace(relation_head=head, settings=SimpleNamespace(
        pair_none_bias=None, pair_head_none_bias=None, triple_none_bias=None, triple_head_none_bias=None))
    seen = []

    def pairs(agent, examples):
        seen.append(("pairs", agent.relation_head, agent.settings.pair_head_none_bias))
        margin = 3.0 if agent.relation_head is not None else -0.5  # the right answer's margin on each scale
        return [calibrate.PairScore(id="1", gold="/per/per/peer", label="/per/per/peer", margin=margin),
                calibrate.PairScore(id="2", gold="None", label="/per/per/peer", margin=margin - 1.0)]

    def triples(agent, examples):
        seen.append(("triples", agent.relation_head, agent.settings.triple_head_none_bias))
        margin = 2.0 if agent.relation_head is not None else -2.0
        return [([(margin, True), (margin - 1.0, False)], 1)]

    monkeypatch.setattr(calibrate, "score_pairs", pairs)
    monkeypatch.setattr(calibrate, "score_triples", triples)
    out = tmp_path / "settings.json"
    by_pairs = calibrate.calibrate(agent, [tmp_path / "r.yaml"], out)
    by_triples = calibrate.calibrate_triples(agent, [tmp_path / "r.yaml"], out)
    assert seen == [("pairs", head, -1e9), ("pairs", None, -1e9), ("triples", head, -1e9), ("triples", None, -1e9)]
    assert agent.relation_head is head and agent.settings.pair_head_none_bias is None
    assert agent.settings.triple_head_none_bias is None
    written = json.loads(out.read_text())
    assert 2.0 <= written["pair_head_none_bias"] < 3.0 and -1.5 <= written["pair_none_bias"] < -0.5
    assert 1.0 <= written["triple_head_none_bias"] < 2.0 and -3.0 <= written["triple_none_bias"] < -2.0
    about = written["_about"]
    assert "relation head (layer 28" in about["pair_head_none_bias"] and "relation head" in about[
        "triple_head_none_bias"]
    assert about["pair_head_calibration"] == by_pairs["pair_head"].model_dump(mode="json")
    assert about["calibration"] == by_pairs["pair"].model_dump(mode="json")
    assert about["triple_head_calibration"] == by_triples["triple_head"].model_dump(mode="json")
    assert about["triple_calibration"] == by_triples["triple"].model_dump(mode="json")


def test_a_head_worse_than_the_ranking_on_the_held_out_slice_is_not_used(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The triple calibration writes the head's margin as null (rank classification decides) when the head's
    held-out triple F1 is below the ranking's; the agent then ignores the head for triples."""
    from reamo.eval import calibrate

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a"})
    monkeypatch.setattr(calibrate, "held_out_mnre_sentences", lambda excluded, limit, seed=0: ["s"])
    head = SimpleNamespace(config=SimpleNamespace(layer=28))
    agent = SimpleNamespace(relation_head=head, settings=SimpleNamespace(triple_none_bias=None,
                                                                         triple_head_none_bias=None))

    def triples(agent, examples):  # the head ranks a wrong triple first; the ranking does not
        if agent.relation_head is not None:
            return [([(2.0, False), (1.0, True)], 1)]
        return [([(2.0, True), (1.0, False)], 1)]

    monkeypatch.setattr(calibrate, "score_triples", triples)
    out = tmp_path / "settings.json"
    result = calibrate.calibrate_triples(agent, [tmp_path / "r.yaml"], out)
    assert result["triple_head"].f1 < result["triple"].f1 == 1.0
    written = json.loads(out.read_text())
    assert written["triple_head_none_bias"] is None and 1.0 <= written["triple_none_bias"] < 2.0
    assert "not used" in written["_about"]["triple_head_none_bias"]
    assert written["_about"]["triple_head_calibration"] == result["triple_head"].model_dump(mode="json")
    from reamo.model.embedded_default import read_settings

    assert AgentSettings(**read_settings(out)).triple_head_none_bias is None


def test_fit_relation_head_command_writes_a_head_the_model_folder_loads(tiny_model_folder: Path) -> None:
    folder = tiny_model_folder
    """`reamo fit-relation-head F --model F`: the head lands beside the model and travels with it; a --layer the
    model lacks is refused before any work."""
    refused = run_cli("fit-relation-head", str(folder), "--model", str(folder), "--layer", "99")
    assert refused.exit_code == 2 and "--layer 99" in refused.output
    assert not (folder / "relation_head.safetensors").exists()
    done = run_cli("fit-relation-head", str(folder), "--model", str(folder), "--layer", "1", "--limit", "20")
    assert done.exit_code == 0, done.output
    head = Agent.from_pretrained(str(folder)).relation_head
    assert head is not None and head.config.layer == 1 and head.config.n_examples == 20
    assert [(r.layer, r.at) for r in head.config.reads] == [(1, "answer_start")]
    assert 0 < head.config.n_positive < 20 and head.config.labels[0] == "None" and "member_of" in head.config.labels
