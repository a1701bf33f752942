"""Relations and events by candidate scoring: candidates, the scored decisions on a tiny model (margins equal to the
model's own log-likelihoods, thresholds applied, every kept item carrying its score), calibration and tuning data."""

from __future__ import annotations

import pytest

from reamo.agent import Agent, AgentSettings
from reamo.candidates import TriggerLexicon, pair_candidates, tag, trigger_candidates
from reamo.model import ReamoConfig, ReamoModel
from reamo.ontology import allowed_relations, event_roles, fitting_roles, is_symmetric, relation_signatures
from reamo.pipeline import generation_tasks
from reamo.schema import Entity, Event, Labels, Mention, TextSpan
from reamo.tools.registry import ToolRegistry

TEXT = "Police arrested Rafael Nadal in Paris after he met Mery Perello."
RAW = "Entities: (Police, ORG)(Rafael Nadal, PER)(Paris, LOC)(Mery Perello, PER)"
LABELS = Labels(entity_types=["PER", "ORG", "LOC"], relation_types=["peer", "member_of", "place_of_residence"],
                event_types=["Justice:Arrest-Jail", "Contact:Meet", "Conflict:Attack"])
LEXICON = TriggerLexicon(lemmas={"arrest": {"Justice:Arrest-Jail": 5}, "meet": {"Contact:Meet": 3}})


@pytest.fixture(scope="module")
def agent(tiny_llm_dir) -> Agent:
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    return Agent(model, registry=ToolRegistry(), settings=AgentSettings(few_shot=False), trigger_lexicon=LEXICON)


def entity(text: str, type_: str, start: int) -> Entity:
    return Entity(text=text, type=type_, span=TextSpan(start=start, end=start + len(text)))


def test_ontology_knows_roles_signatures_and_symmetry() -> None:
    assert event_roles("Conflict:Attack") == ["Attacker", "Target", "Instrument", "Place"]
    assert event_roles("my:Event", {"My:Event": ["Who"]}) == ["Who"] and event_roles("my:Other") == []
    signatures = relation_signatures(["member_of", "/per/per/peer", "founded"])
    assert signatures == {"member_of": ("PER", "ORG"), "/per/per/peer": ("PER", "PER"), "founded": None}
    assert allowed_relations(["member_of", "peer", "founded"], "PER", "ORG") == ["member_of", "founded"]
    assert is_symmetric("peer") and is_symmetric("/per/per/couple") and not is_symmetric("member_of")


def test_fitting_roles_are_the_roles_an_entity_of_that_type_can_fill() -> None:
    # ACE's argument types: a city is never a victim or an instrument, a person never a place or a vehicle
    assert fitting_roles("Conflict:Attack", "GPE") == ["Attacker", "Target", "Place"]
    assert fitting_roles("Life:Die", "GPE") == ["Agent", "Place"]
    assert fitting_roles("Life:Die", "PER") == ["Agent", "Victim"]
    assert fitting_roles("Movement:Transport", "VEH") == ["Artifact", "Vehicle"]
    assert fitting_roles("Conflict:Attack", "VALUE") == []
    # not narrowed: an entity type ACE does not have, the caller's own roles, an event type without ACE roles
    assert fitting_roles("Conflict:Attack", "PERSON") == event_roles("Conflict:Attack")
    assert fitting_roles("Life:Die", "GPE", {"life:die": ["Victim", "Where"]}) == ["Victim", "Where"]
    assert fitting_roles("my:Event", "PER") == []


def test_trigger_candidates_come_from_the_lexicon_and_open_types_from_the_tagger() -> None:
    words = tag([TEXT])[0]
    assert [w.lemma for w in words if w.text == "arrested"] == ["arrest"]
    known = trigger_candidates(words, ["Justice:Arrest-Jail", "Contact:Meet"], LEXICON)
    assert [(c.text, TEXT[c.span.start:c.span.end]) for c in known] == [("arrested", "arrested"), ("met", "met")]
    assert [c.text for c in trigger_candidates(words, ["Contact:Meet"], LEXICON)] == ["met"]
    # a type the lexicon never saw: every verb and noun is a candidate
    opened = {c.text for c in trigger_candidates(words, ["Business:Merge-Org"], LEXICON)}
    assert {"arrested", "met"} <= opened and "Paris" not in opened and "in" not in opened


def test_pair_candidates_skip_pairs_no_relation_allows_and_keep_the_nearest() -> None:
    found = [entity("Police", "ORG", 0), entity("Rafael Nadal", "PER", 16), entity("Paris", "LOC", 32),
             entity("Mery Perello", "PER", 51)]
    pairs = pair_candidates(found, ["peer", "member_of"])
    assert {(a.text, b.text) for a, b, _ in pairs} == {("Police", "Rafael Nadal"), ("Rafael Nadal", "Mery Perello"),
                                                       ("Police", "Mery Perello")}
    assert pairs[0][0].text == "Police" and pairs[0][2] == ["member_of"]  # nearest pair first, its relations
    assert len(pair_candidates(found, ["peer", "member_of"], max_pairs=1)) == 1
    assert len(pair_candidates(found, ["peer"], by_type=False)) == 6  # no filter by entity type: every pair


def test_scored_tasks_are_not_generated_but_need_the_entities(agent: Agent) -> None:
    old = agent.settings.model_copy()
    try:
        assert generation_tasks(agent, ("re", "ee"), False) == ("re", "ee")
        agent.settings.triple_none_bias, agent.settings.trigger_none_bias = 0.0, 0.0
        assert generation_tasks(agent, ("re", "ee"), False) == ("ner",)
        assert generation_tasks(agent, ("re",), True) == ("re",)  # given pairs: classified, not generated
        request = agent.prepare(TEXT, tasks=("re",), labels=LABELS)
        assert "Entities: (text, type)" in request.prompt and "Relations:" not in request.prompt
    finally:
        agent.settings = old


def test_relations_are_the_best_scored_pair_and_direction_above_the_margin(agent: Agent) -> None:
    from reamo.decisions import question_segment
    from reamo.segmenting import Window

    old = agent.settings.model_copy()
    try:
        agent.settings.triple_none_bias = -1e9  # every pair gets its best relation
        request = agent.prepare(TEXT, tasks=("ner", "re"), labels=LABELS)
        result = agent.finish(request, [RAW])
        pairs = {(r.head.text, r.tail.text) for r in result.relations}
        # PER-ORG (member_of) x2, PER-PER (peer), PER-LOC (place_of_residence) x2; no label relates Police and Paris
        assert len(result.relations) == 5 == len(pairs)
        assert not {("Police", "Paris"), ("Paris", "Police")} & pairs
        end = agent.model.tokenizer.eos_token
        for relation in result.relations:
            assert relation.score is not None and relation.type in LABELS.relation_types
            assert TEXT[relation.head.span.start:relation.head.span.end] == relation.head.text
            if is_symmetric(relation.type):
                assert relation.head.span.start < relation.tail.span.start  # text order
            else:  # the margin is the model's own: log p(relation) - log p(None) for that direction
                segment = question_segment(agent, request, Window(start=0, text=TEXT), ("re",),
                                           pairs=[(relation.head.text, relation.tail.text)])
                scores = agent.model.continuation_logprobs(segment.prompt, None, [
                    f"Relations: None{end}",
                    f"Relations: ({relation.head.text}, {relation.type},"])
                assert relation.score == pytest.approx(scores[1] - scores[0], abs=1e-3)
        margins = sorted(r.score for r in result.relations)
        agent.settings.triple_none_bias = margins[0] + 1e-3  # the weakest one falls below the margin
        assert len(agent.finish(request, [RAW]).relations) == 4
        agent.settings.triple_none_bias = 1e9
        assert agent.finish(request, [RAW]).relations == []
    finally:
        agent.settings = old


def test_events_are_scored_candidates_with_roles_of_their_type(agent: Agent) -> None:
    old = agent.settings.model_copy()
    try:
        agent.settings.trigger_none_bias = -1e9
        agent.settings.argument_none_bias = -1e9
        labels = LABELS.model_copy(update={"event_types": ["Justice:Arrest-Jail", "Contact:Meet"]})
        request = agent.prepare(TEXT, tasks=("ner", "ee"), labels=labels)
        result = agent.finish(request, [RAW])
        types = {e.text: e.type for e in result.entities}
        assert [e.trigger.text for e in result.events] == ["arrested", "met"]  # the lexicon's candidates
        for event in result.events:
            assert event.score is not None and event.type in labels.event_types
            assert TEXT[event.trigger.span.start:event.trigger.span.end] == event.trigger.text
            assert len(event.arguments) == 4  # each entity of the sentence, in one of the type's roles
            assert all(a.role in event_roles(event.type) and a.score is not None for a in event.arguments)
            assert all(a.role in fitting_roles(event.type, types[a.entity.text]) for a in event.arguments)
        weakest = min(a.score for e in result.events for a in e.arguments)
        agent.settings.argument_none_bias = weakest + 1e-3
        fewer = agent.finish(request, [RAW])
        assert sum(len(e.arguments) for e in fewer.events) == 7
        agent.settings.trigger_none_bias = 1e9  # nothing beats None: no event invented
        assert agent.finish(request, [RAW]).events == []
        only_ee = agent.finish(agent.prepare(TEXT, tasks=("ee",), labels=labels), [RAW])
        assert only_ee.entities == [] and only_ee.events == []  # entities used, not reported
    finally:
        agent.settings = old


def test_best_threshold_prefers_the_higher_margin_among_equal_f1() -> None:
    from reamo.eval.calibrate import best_threshold

    scored = [(3.0, True), (2.0, True), (1.0, False), (0.0, True), (-1.0, False)]
    calibration = best_threshold(scored, n_gold=4, n_sentences=2)
    # above -0.5: four kept, three right (P 3/4, R 3/4), better than 1.5 (P 1, R 1/2) or keeping all (P 3/5, R 3/4)
    assert calibration.bias == pytest.approx(-0.5) and calibration.f1 == pytest.approx(0.75)
    # nothing right anywhere: every margin ties at F1 0, and the highest one keeps nothing (invents nothing)
    none_right = best_threshold([(1.0, False), (0.5, False)], n_gold=0)
    assert none_right.bias == pytest.approx(2.0) and none_right.precision == 0.0
    assert best_threshold([], n_gold=3).f1 == 0.0
    # a margin chosen elsewhere (a head's out-of-fold one) is kept, with what it scores on these candidates
    given = best_threshold(scored, n_gold=4, n_sentences=2, at=1.5)
    assert given.bias == 1.5 and given.precision == 1.0 and given.recall == 0.5 and given.f1 == pytest.approx(2 / 3)
    # a floor (a bound on invented answers) leaves out the better margins below it: the best of those above
    floored = best_threshold(scored, n_gold=4, n_sentences=2, floor=0.2)
    assert floored.bias == pytest.approx(1.5) and floored.f1 == pytest.approx(2 / 3)
    assert best_threshold(scored, n_gold=4, floor=-5.0).bias == pytest.approx(-0.5)  # a floor below the best: no change


@pytest.mark.needs_data
def test_decision_tuning_data_asks_what_the_agent_asks() -> None:
    from reamo.datasets import m2e2_calibration_held_out, read_m2e2, read_mnre
    from reamo.tuning.decisions import (
        argument_examples,
        build_trigger_lexicon,
        m2e2_for_decisions,
        reversed_pair_examples,
        trigger_examples,
    )

    sentences = m2e2_for_decisions("train")
    assert sentences and not any(m2e2_calibration_held_out(e) for e in sentences)
    assert len(sentences) < len(read_m2e2("train"))
    with_events = [e for e in sentences if e.gold.events][:20] + [e for e in sentences if not e.gold.events][:20]
    lexicon = build_trigger_lexicon(with_events)
    assert "kill" in lexicon.lemmas or "attack" in lexicon.lemmas
    triggers = trigger_examples(with_events, "train", lexicon, negatives=10)
    gold = sum(len(e.gold.events) for e in with_events)
    answers = [t.target for t in triggers]
    assert len(triggers) == gold + 10 and sum(a == "Events: None" for a in answers) >= 10
    assert all("Trigger candidate: " in t.messages[1]["content"] for t in triggers)
    arguments = argument_examples(with_events, "train", negatives=5)
    assert any(" | " in a.target and ":" in a.target.split(" | ")[-1] for a in arguments)
    assert all("Argument candidate: " in a.messages[1]["content"] for a in arguments)
    lines = [e for e in read_mnre("train", limit=200) if e.gold.relations][:10]
    reversed_ = reversed_pair_examples(lines, "train")
    assert len(reversed_) == len(lines)
    for example, line in zip(reversed_, lines, strict=True):
        assert f"Entity pairs: ({line.meta['tail']['text']}; {line.meta['head']['text']})" in example.messages[1]["content"]
    with pytest.raises(Exception, match="evaluation only"):
        trigger_examples(with_events, "dev", lexicon, negatives=1)


@pytest.mark.needs_data
def test_triple_evaluation_scores_sentences_not_lines() -> None:
    from reamo.datasets import read_mnre
    from reamo.eval.runner import triple_examples

    lines = read_mnre("val", limit=60)
    sentences = triple_examples(lines)
    assert len(sentences) == len({line.text for line in lines})
    assert sum(len(s.gold.relations) for s in sentences) == sum(len(line.gold.relations) for line in lines)
    assert all("head" not in s.meta for s in sentences)


def test_events_are_a_default_task() -> None:
    """Events met both bars on M2E2 dev (trigger F1 >= 45, at most 1 in 10 event-free sentences given an event): a
    request without tasks asks entities, relations and events, in the CLI, the UI and the demo; a subset still
    works."""
    import inspect

    from reamo.cli import extract
    from reamo.demo import DemoExample
    from reamo.pipeline import validate_request
    from reamo.ui.app import TASK_CHOICES
    from reamo.ui.examples import UIExample

    assert validate_request(text="Rafael Nadal won.").tasks == ("ner", "re", "ee")
    assert validate_request(text="Rafael Nadal won.", tasks="ner,ee").tasks == ("ner", "ee")
    assert UIExample(label="x", text="y").tasks == ["ner", "re", "ee"]
    assert DemoExample(name="x", text="y").tasks == "ner,re,ee"
    assert ("EE (events)", "ee") in TASK_CHOICES and not any("experimental" in label for label, _ in TASK_CHOICES)
    assert inspect.signature(extract).parameters["tasks"].default.default == "ner,re,ee"


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_relation_answers_stop_at_a_token_boundary_of_the_full_answer(which: str, agent: Agent) -> None:
    """A relation is scored up to its name (`relation_answers`): the log-likelihood of those tokens is then exactly
    the start of the full answer's, only if the cut answer tokenizes as a prefix of the full one."""
    from reamo.decisions import relation_answers
    from reamo.protocol import format_relation

    tokenizer = agent.model.tokenizer if which == "tiny" else Agent.from_pretrained("default").model.tokenizer
    end = tokenizer.eos_token or ""
    for head, relation, tail in [("@GoldenKnights", "member_of", "Western Conference Final"),
                                 ("Obama", "peer", "Biden"), ("NHL", "locate_at", "#StanleyCup"),
                                 ("Smith, John", "/per/per/couple", "Mary (Jr.)"), ("a", "present_in", "b")]:
        none, cut = relation_answers(head, [relation], end)
        assert none == f"Relations: None{end}"
        full = f"Relations: {format_relation(head, relation, tail)}{end}"
        assert full.startswith(cut) and relation in cut and tail not in cut
        cut_ids = tokenizer(cut, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        assert full_ids[:len(cut_ids)] == cut_ids and len(cut_ids) < len(full_ids)


@pytest.mark.parametrize("which", ["tiny", "default"])
def test_trigger_answers_stop_at_a_token_boundary_of_the_full_answer(which: str, agent: Agent) -> None:
    """A trigger candidate's type is scored up to the type (`trigger_answers`); as for relations, the cut answer
    must tokenize as a prefix of the full one for its log-likelihood to be the start of the full answer's."""
    from reamo.decisions import trigger_answers
    from reamo.protocol import format_event

    tokenizer = agent.model.tokenizer if which == "tiny" else Agent.from_pretrained("default").model.tokenizer
    end = tokenizer.eos_token or ""
    types = ["Conflict:Attack", "Movement:Transport", "Justice:Arrest-Jail", "Contact:Phone-Write", "Life:Die"]
    for trigger in ["battle", "fired", "#protest", "set off", "U.S.-led", "Phone"]:
        none, *cuts = trigger_answers(types, end)
        assert none == f"Events: None{end}" and len(cuts) == len(types)
        for type_, cut in zip(types, cuts):
            full = f"Events: {format_event(Event(type=type_, trigger=Mention(text=trigger)))}{end}"
            assert full.startswith(cut) and type_ in cut and full[len(cut):].startswith(f" {trigger}]")
            cut_ids = tokenizer(cut, add_special_tokens=False)["input_ids"]
            full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
            assert full_ids[:len(cut_ids)] == cut_ids and len(cut_ids) < len(full_ids)


def test_f1_interval_shows_how_little_a_small_calibration_slice_says() -> None:
    from reamo.eval.calibrate import f1_interval

    perfect = [([(1.0, True)], 1), ([(0.5, True), (-1.0, False)], 1), ([], 0)]
    assert f1_interval(perfect, bias=0.0) == (1.0, 1.0)  # every redraw of a perfect slice is perfect
    # 20 sentences, 10 gold items: above 0.0 six answers, four right (F1 0.5)
    small = ([([(1.0, True)], 1)] * 4 + [([(0.8, False)], 0)] * 2 + [([(-0.5, True)], 1)] * 2
             + [([], 1)] * 4 + [([(-1.0, False)], 0)] * 8)
    low, high = f1_interval(small, bias=0.0)
    assert low < 0.5 < high and high - low > 0.2
    low_big, high_big = f1_interval(small * 25, bias=0.0)  # the same mix, 25 times the sentences
    assert low < low_big < 0.5 < high_big < high
