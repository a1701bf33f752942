"""The argument head: an event's argument roles are decided by it exactly where it knows every role the event type
allows and has a calibrated margin (its own threshold; its softmax over that type's roles only); fitting labels each
gold entity by the role it plays in each gold event; event calibration with an argument head writes its margin and
the ranking's, each on the same events, and writes the head's as null when it loses."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import constant_head, run_cli

from reamo.agent import Agent, AgentSettings
from reamo.candidates import TriggerLexicon
from reamo.datasets import Example
from reamo.model import ReamoConfig, ReamoModel
from reamo.schema import Argument, Entity, Event, Labels, Mention, Result, TextSpan
from reamo.tools.registry import ToolRegistry

TEXT = "Police arrested Rafael Nadal in Paris."
RAW = "Entities: (Police, ORG)(Rafael Nadal, PER)(Paris, LOC)"
ARREST = "Justice:Arrest-Jail"  # ACE roles: Person, Agent, Place
LABELS = Labels(entity_types=["PER", "ORG", "LOC"], event_types=[ARREST])
LEXICON = TriggerLexicon(lemmas={"arrest": {ARREST: 5}})
ROLES = ["Person", "Agent", "Place", "Attacker"]  # the head's roles: Attacker is no Arrest-Jail role


def span(text: str) -> TextSpan:
    return TextSpan(start=TEXT.index(text), end=TEXT.index(text) + len(text))


@pytest.fixture(scope="module")
def agent(tiny_llm_dir) -> Agent:
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    hidden = model.llm.config.hidden_size
    trigger_head = constant_head(hidden, ["None", ARREST], [0.0, 5.0])  # every candidate an arrest, margin 5
    return Agent(model, registry=ToolRegistry(), trigger_lexicon=LEXICON, trigger_head=trigger_head,
                 settings=AgentSettings(few_shot=False, trigger_none_bias=1e9, trigger_head_none_bias=0.0))


def arguments(agent: Agent, labels: Labels = LABELS) -> list[tuple[str, str, float]]:
    events = agent.finish(agent.prepare(TEXT, tasks=("ner", "ee"), labels=labels), [RAW]).events
    assert [(e.trigger.text, e.type) for e in events] == [("arrested", ARREST)]
    return [(a.entity.text, a.role, a.score) for a in events[0].arguments]


def test_argument_roles_use_the_argument_head_where_it_knows_the_roles(agent: Agent) -> None:
    old = agent.settings.model_copy(), agent.argument_head
    try:
        # Attacker would win over all (10) but Arrest-Jail has no such role: among None and its roles, Agent by 4;
        # a place (LOC) can only be the Place (-2), which does not beat None
        agent.argument_head = constant_head(agent.model.llm.config.hidden_size, ["None", *ROLES],
                                            [0.0, 1.0, 4.0, -2.0, 10.0])
        agent.settings.argument_none_bias, agent.settings.argument_head_none_bias = 1e9, 0.0
        found = arguments(agent)
        assert [(text, role) for text, role, _ in found] == [("Police", "Agent"), ("Rafael Nadal", "Agent")]
        assert all(score == pytest.approx(4.0, abs=1e-4) for _, _, score in found)
        agent.settings.argument_head_none_bias = -2.5
        assert arguments(agent)[2][:2] == ("Paris", "Place")
        agent.settings.argument_head_none_bias = 4.5  # the head's own threshold
        assert arguments(agent) == []
        # no calibrated head margin, or roles of the caller's the head never saw: rank classification decides
        agent.settings.argument_none_bias = -1e9
        user_roles = LABELS.model_copy(update={"event_roles": {ARREST: ["Person", "Jailer"]}})
        for head_bias, labels in ((None, LABELS), (0.0, user_roles)):
            agent.settings.argument_head_none_bias = head_bias
            with_head = arguments(agent, labels)
            head, agent.argument_head = agent.argument_head, None
            without = arguments(agent, labels)
            agent.argument_head = head
            assert len(with_head) == 3 and with_head == without
            assert all(score != pytest.approx(4.0, abs=1e-4) for _, _, score in with_head)
        assert {role for _, role, _ in arguments(agent, user_roles)} <= {"Person", "Jailer"}
    finally:
        agent.settings, agent.argument_head = old


def m2e2_example(n: int, roles: dict[str, str]) -> Example:
    entities = [Entity(text=text, type=type_, span=span(text))
                for text, type_ in (("Police", "ORG"), ("Rafael Nadal", "PER"), ("Paris", "GPE"))]
    event = Event(type=ARREST, trigger=Mention(text="arrested", span=span("arrested")), arguments=[
        Argument(role=role, entity=Mention(text=text, span=span(text))) for text, role in roles.items()])
    return Example(id=f"m2e2:train:{n}", text=TEXT, gold=Result(entities=entities, events=[event]), source="m2e2",
                   split="train")


def test_fit_argument_head_labels_each_entity_by_its_role_in_each_event(agent: Agent) -> None:
    from reamo.tuning.heads import argument_roles, argument_states, fit_argument_head

    examples = [m2e2_example(0, {"Police": "Agent", "Rafael Nadal": "Person"}),
                m2e2_example(1, {"Paris": "Place", "Police": "Attacker"})]  # Attacker: no Arrest-Jail role
    no_event = Example(id="m2e2:train:2", text=TEXT, gold=Result(entities=examples[0].gold.entities), source="m2e2",
                       split="train")
    states, targets = argument_states(agent, [*examples, no_event], [ARREST], layer=1)
    # the role-less Attacker candidate is left out; the sentence without events asks nothing
    assert targets == ["Agent", "Person", None, None, "Place"]
    assert states.shape == (5, agent.model.llm.config.hidden_size)
    torch.testing.assert_close(states[1], states[3], rtol=1e-4, atol=1e-4)  # the same question about Rafael Nadal
    # with the argument candidate's last token read too: the answer start's state, then one that names the candidate
    from reamo.model.decision_heads import StateRead

    two = argument_states(agent, examples, [ARREST], layer=[StateRead(layer=1), StateRead(layer=1, at="question_end")])
    width = agent.model.llm.config.hidden_size
    assert two[1] == targets and two[0].shape == (5, 2 * width)
    torch.testing.assert_close(two[0][:, :width], states, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(two[0][0, width:], two[0][1, width:])  # "Police" and "Rafael Nadal" end differently
    head = fit_argument_head(agent, examples * 2, [ARREST, "Conflict:Attack"], layer=1)
    assert head.config.labels == ["None", *argument_roles([ARREST, "Conflict:Attack"])]
    assert head.config.labels[:4] == ["None", "Person", "Agent", "Place"] and "Attacker" in head.config.labels
    assert head.config.n_examples == 10 and head.config.n_positive == 6 and head.config.answer_start == "Events:"
    with pytest.raises(ValueError, match="candidates that play a role and candidates that do not"):
        fit_argument_head(agent, [m2e2_example(0, {})], [ARREST], layer=1)


def test_event_calibration_with_an_argument_head_compares_it_on_the_same_events(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passes: rank classification throughout, the trigger head, then the argument head on the events of the
    trigger decider kept; the argument head's margin is written when it is at least as good, else null."""
    from reamo.eval import calibrate
    from reamo.model.embedded_default import read_settings

    monkeypatch.setattr(calibrate, "training_texts", lambda recipes: {"a"})
    monkeypatch.setattr(calibrate, "held_out_m2e2_sentences", lambda excluded, limit, seed=0: ["s1"])
    from reamo.model.decision_heads import DecisionHeadConfig, OutOfFoldMargin

    def config(layer: int) -> DecisionHeadConfig:
        return DecisionHeadConfig(layer=layer, labels=["None", "Justice:Arrest-Jail"], hidden_size=8,
                                  answer_start="Events:")

    trigger_head = SimpleNamespace(config=config(24))
    argument_head = SimpleNamespace(config=config(20))
    seen = []
    right_first, wrong_first = [(2.0, True), (1.0, False)], [(2.0, False), (1.0, True)]  # which has the higher margin

    def score(agent, examples, written=None):
        by_trigger_head, by_argument_head = agent.trigger_head is not None, agent.argument_head is not None
        seen.append((by_trigger_head, by_argument_head, agent.settings.argument_head_none_bias))
        trigger = (3.0, True) if by_trigger_head else (-1.0, True)
        args = right_first if by_argument_head == head_wins else wrong_first
        return [calibrate.ScoredEventSentence(triggers=[(*trigger, args), (trigger[0] - 1.0, False, [])],
                                              n_triggers=1, n_arguments=1)]

    monkeypatch.setattr(calibrate, "score_event_decisions", score)
    for head_wins in (True, False):
        seen.clear()
        agent = SimpleNamespace(trigger_head=trigger_head, argument_head=argument_head, settings=SimpleNamespace(
            trigger_none_bias=None, trigger_head_none_bias=None, argument_none_bias=None,
            argument_head_none_bias=None))
        out = tmp_path / f"settings-{head_wins}.json"
        result = calibrate.calibrate_event_decisions(agent, [tmp_path / "r.yaml"], out)
        assert seen == [(False, False, None), (True, False, None), (True, True, -1e9)]
        assert agent.trigger_head is trigger_head and agent.argument_head is argument_head
        written = json.loads(out.read_text())
        assert 2.0 <= written["trigger_head_none_bias"] < 3.0 and -2.0 <= written["trigger_none_bias"] < -1.0
        assert "on the events the trigger head keeps" in written["_about"]["argument_none_bias"]
        assert written["_about"]["argument_head_calibration"] == result["argument_head"].model_dump(mode="json")
        if head_wins:
            assert result["argument_head"].f1 == 1.0 > result["argument"].f1
            assert 1.0 <= written["argument_head_none_bias"] < 2.0
            assert "argument head (layer 20" in written["_about"]["argument_head_none_bias"]
        else:
            assert result["argument_head"].f1 < result["argument"].f1 == 1.0
            assert written["argument_head_none_bias"] is None and 1.0 <= written["argument_none_bias"] < 2.0
            assert "not used" in written["_about"]["argument_head_none_bias"]
            assert AgentSettings(**read_settings(out)).argument_head_none_bias is None
    # a trigger head with an out-of-fold margin keeps it: the slice only checks it (here it keeps the one trigger)
    trigger_head.config.out_of_fold = OutOfFoldMargin(bias=2.5, f1=0.5, precision=0.5, recall=0.5, n_gold=800,
                                                      n_candidates=6000, folds=5, max_invented=0.075, invented=0.0712,
                                                      n_event_free=4000)
    out = tmp_path / "settings-out-of-fold.json"
    result = calibrate.calibrate_event_decisions(agent, [tmp_path / "r.yaml"], out)
    written = json.loads(out.read_text())
    assert written["trigger_head_none_bias"] == 2.5 and result["trigger_head"].f1 == 1.0
    assert "out-of-fold one, chosen at fit time on its 6000 candidates" in written["_about"]["trigger_head_none_bias"]
    assert "7.1% of its 4000 event-free sentences given an event, held to at most 7.5%" in \
        written["_about"]["trigger_head_none_bias"]


def test_event_calibration_passes_share_what_the_model_wrote(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """The passes of `calibrate-events` differ only in how they decide: the model writes each sentence once, and a
    pass reading those outputs scores exactly what a pass that wrote them did."""
    from reamo import pipeline
    from reamo.eval import calibrate

    generate, asked = pipeline.generate_segments, []
    monkeypatch.setattr(pipeline, "generate_segments", lambda a, jobs: asked.append(len(jobs)) or generate(a, jobs))
    old = agent.settings.model_copy()
    try:
        agent.settings.trigger_none_bias = agent.settings.argument_none_bias = -1e9
        examples = [m2e2_example(n, {"Rafael Nadal": "Person"}) for n in range(3)]
        written: dict[int, list[str]] = {}
        first = calibrate.score_event_decisions(agent, examples, batch_size=2, written=written)
        assert asked == [2, 1] and sorted(written) == [0, 1, 2] and all(len(w) == 1 for w in written.values())
        again = calibrate.score_event_decisions(agent, examples, batch_size=2, written=written)
        assert asked == [2, 1] and again == first  # nothing written again, the same decisions
        # every candidate scored (the tagger's verbs and nouns: the M2E2 types are not all in the lexicon)
        assert [len(s.triggers) for s in first] == [2, 2, 2] and first[0].n_triggers == 1
        calibrate.score_event_decisions(agent, examples[:1])
        assert asked == [2, 1, 1]  # without shared outputs the model writes
    finally:
        agent.settings = old


def test_fit_argument_head_command_writes_a_head_the_model_folder_loads(tiny_model_folder: Path) -> None:
    folder = tiny_model_folder
    refused = run_cli("fit-argument-head", str(folder), "--model", str(folder), "--layer", "99")
    assert refused.exit_code == 2 and "--layer 99" in refused.output
    assert not (folder / "argument_head.safetensors").exists()
    done = run_cli("fit-argument-head", str(folder), "--model", str(folder), "--layer", "1", "--question-end-layer",
                   "2", "--limit", "30")
    assert done.exit_code == 0, done.output
    head = Agent.from_pretrained(str(folder)).argument_head
    assert head is not None and head.config.layer == 1 and head.config.labels[0] == "None"
    assert [(r.layer, r.at) for r in head.config.reads] == [(1, "answer_start"), (2, "question_end")]
    assert 0 < head.config.n_positive < head.config.n_examples and "Attacker" in head.config.labels


def test_the_eval_report_says_how_the_events_were_decided() -> None:
    from reamo.eval.runner import DATASETS, _event_notes
    from reamo.tuning.heads import argument_roles

    spec = DATASETS["m2e2"]
    types = list(spec.labels.event_types)
    roles = argument_roles(types)
    agent = SimpleNamespace(trigger_head=constant_head(8, ["None", *types], [0.0] * (len(types) + 1)),
                            argument_head=constant_head(8, ["None", *roles], [0.0] * (len(roles) + 1)))
    settings = AgentSettings(trigger_none_bias=-0.5, trigger_head_none_bias=-1.0, argument_none_bias=-0.7,
                             argument_head_none_bias=-0.9)
    note, = _event_notes(agent, settings, spec)
    assert "decided by the trigger head (the LLM's layer 1 at the answer start, `reamo fit-trigger-head`) with margin -1.0" in note
    assert "decided by the argument head (the LLM's layer 1 at the answer start, `reamo fit-argument-head`) with margin -0.9" in note
    settings.argument_head_none_bias = None  # not calibrated (or it lost): the ranking decides roles
    assert "role of its type or none, decided by rank classification of the model's answers with margin -0.7" in \
        _event_notes(agent, settings, spec)[0]
    settings.argument_head_none_bias = -0.9
    agent.argument_head = constant_head(8, ["None", *roles[:-1]], [0.0] * len(roles))  # a role it never saw
    assert "argument head" not in _event_notes(agent, settings, spec)[0]
    settings.trigger_none_bias = settings.event_none_bias = None
    assert _event_notes(agent, settings, spec) == []
