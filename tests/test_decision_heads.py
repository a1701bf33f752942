"""The trigger head: a linear head on the LLM's hidden state at the answer start. Its states equal a plain forward's,
the fit learns, it survives a save, and the event decisions use it exactly where it knows the requested types."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_cli

from reamo.agent import Agent, AgentSettings
from reamo.candidates import TriggerLexicon
from reamo.datasets import Example
from reamo.decisions import question_segment, segment_item
from reamo.model import ReamoConfig, ReamoModel
from reamo.model.decision_heads import DecisionHead, DecisionHeadConfig, StateRead
from reamo.prompting import trigger_question
from reamo.schema import Event, Labels, Mention, Result, TextSpan
from reamo.tools.registry import ToolRegistry

TEXT = "Police arrested Rafael Nadal in Paris after he met Mery Perello."
RAW = "Entities: (Police, ORG)(Rafael Nadal, PER)(Paris, LOC)(Mery Perello, PER)"
TYPES = ["Justice:Arrest-Jail", "Contact:Meet"]
LABELS = Labels(entity_types=["PER", "ORG", "LOC"], event_types=TYPES)
LEXICON = TriggerLexicon(lemmas={"arrest": {"Justice:Arrest-Jail": 5}, "meet": {"Contact:Meet": 3}})


@pytest.fixture(scope="module")
def agent(tiny_llm_dir) -> Agent:
    model = ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir)))
    return Agent(model, registry=ToolRegistry(), settings=AgentSettings(few_shot=False), trigger_lexicon=LEXICON)


def head_config(hidden: int, labels: list[str] | None = None, layer: int = 1) -> DecisionHeadConfig:
    return DecisionHeadConfig(layer=layer, labels=labels or ["None", *TYPES], hidden_size=hidden,
                              answer_start="Events:")


def test_answer_start_states_equal_a_plain_forward(agent: Agent) -> None:
    request = agent.prepare(TEXT, tasks=("ee",), labels=LABELS)
    window = request.text_segments[0].window
    items = [segment_item(question_segment(agent, request, window, ("ee",), question=trigger_question(word)),
                          ["Events:"], None) for word in ("arrested", "met", "a much longer candidate phrase")]
    assert items[0].prefix  # the shared system turn comes from the prefix cache
    model = agent.model
    for layer in (1, model.llm.config.num_hidden_layers):
        states = model.answer_start_states(items, layer, batch_size=2)  # padding and two batches
        for item, state in zip(items, states, strict=True):
            ids = model.tokenize_with_placeholders(item.prompt) + model.tokenizer(
                "Events:", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                plain = model.llm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0, -1]
            torch.testing.assert_close(state, plain.float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one continuation"):
        model.answer_start_states([items[0].model_copy(update={"continuations": ["a", "b"]})], 1)


def test_a_head_reads_several_layers_and_the_question_end(agent: Agent) -> None:
    """The states of several reads are concatenated in order; "question_end" is the candidate word's last token
    (found here by tokenizing the prompt up to the word, independently of the chat template's turn end)."""
    request = agent.prepare(TEXT, tasks=("ee",), labels=LABELS)
    window = request.text_segments[0].window
    words = ("arrested", "met", "a much longer candidate phrase")
    items = [segment_item(question_segment(agent, request, window, ("ee",), question=trigger_question(word)),
                          ["Events:"], None) for word in words]
    model = agent.model
    last = model.llm.config.num_hidden_layers
    reads = [StateRead(layer=1), StateRead(layer=last), StateRead(layer=1, at="question_end")]
    states = model.answer_start_states(items, reads, batch_size=2)
    hidden = model.llm.config.hidden_size
    assert states.shape == (3, 3 * hidden)
    for item, word, state in zip(items, words, states, strict=True):
        ids = model.tokenize_with_placeholders(item.prompt) + model.tokenizer(
            "Events:", add_special_tokens=False)["input_ids"]
        question_end = len(model.tokenize_with_placeholders(item.prompt[:item.prompt.rindex(word) + len(word)])) - 1
        with torch.no_grad():
            plain = model.llm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        expected = torch.cat([plain[1][0, -1], plain[last][0, -1], plain[1][0, question_end]]).float()
        torch.testing.assert_close(state, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(states[:, :hidden], states[:, 2 * hidden:])  # not the answer start read twice


def test_a_head_saved_with_one_layer_reads_the_answer_start() -> None:
    legacy = {"layer": 24, "labels": ["None", "Contact:Meet"], "hidden_size": 8, "answer_start": "Events:"}
    config = DecisionHeadConfig.model_validate(legacy)
    assert config.reads == [StateRead(layer=24)] and config.input_size == 8 and config.out_of_fold is None
    several = DecisionHeadConfig.model_validate({**legacy, "reads": [{"layer": 20}, {"layer": 24, "at": "question_end"}]})
    assert several.layer == 20 and several.input_size == 16
    assert several.describe_reads() == "layer 20 at the answer start + layer 24 at the question's end"
    assert DecisionHead(several).classifier.in_features == 16


def test_fit_learns_separable_states_and_survives_a_save(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4
    targets = torch.arange(3).repeat(40)
    states = centres[targets] + torch.randn(120, 16, generator=generator)
    head = DecisionHead.fit(states, targets, head_config(16))
    assert (head(states).argmax(-1) == targets).float().mean() > 0.95
    head.save(tmp_path, "trigger_head")
    again = DecisionHead.load(tmp_path, "trigger_head")
    assert again is not None and again.config == head.config
    torch.testing.assert_close(again(states), head(states))
    assert DecisionHead.load(tmp_path, "other") is None
    # a decision among fewer labels: the softmax is over "None" and those only
    logits = head(states[:1])[0]
    (best, margin), = head.best_over_none(states[:1], ["contact:meet"])
    assert best == 0 and margin == pytest.approx(float(logits[2] - logits[0]), abs=1e-5)
    assert head.covers(["contact:meet", "Justice:Arrest-Jail"]) and not head.covers(["Conflict:Attack"])
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        DecisionHead.fit(states[:, :8], targets, head_config(16))
    with pytest.raises(ValueError, match="first label"):
        DecisionHead(head_config(16, labels=["Contact:Meet", "None"]))


def test_trigger_decisions_use_the_head_where_it_knows_the_types(agent: Agent) -> None:
    old_settings, old_head = agent.settings.model_copy(), agent.trigger_head
    hidden = agent.model.llm.config.hidden_size
    head = DecisionHead(head_config(hidden)).eval()
    with torch.no_grad():  # states ignored: "Contact:Meet" is 5 log-units above "None", the arrest type 1 below
        head.classifier.weight.zero_()
        head.classifier.bias.copy_(torch.tensor([0.0, -1.0, 5.0]))
    try:
        # the head's margin has its own threshold: the ranking's (1e9 here) does not apply to it
        agent.settings.trigger_none_bias, agent.settings.argument_none_bias = 1e9, None
        agent.settings.trigger_head_none_bias = 0.0
        request = agent.prepare(TEXT, tasks=("ner", "ee"), labels=LABELS)
        agent.trigger_head = None
        assert agent.finish(request, [RAW]).events == []
        agent.trigger_head = head
        events = agent.finish(request, [RAW]).events
        assert [(e.trigger.text, e.type) for e in events] == [("arrested", "Contact:Meet"), ("met", "Contact:Meet")]
        assert all(e.score == pytest.approx(5.0, abs=1e-4) for e in events)
        only_arrest = agent.finish(agent.prepare(TEXT, tasks=("ner", "ee"), labels=LABELS.model_copy(
            update={"event_types": ["Justice:Arrest-Jail"]})), [RAW]).events
        assert only_arrest == []  # asked among None and the arrest type only: None wins by 1
        agent.settings.trigger_head_none_bias = 5.5
        assert agent.finish(request, [RAW]).events == []
        agent.settings.trigger_none_bias, agent.settings.trigger_head_none_bias = -1e9, None
        by_ranking = agent.finish(request, [RAW]).events  # a head without a calibrated margin is not used
        assert by_ranking and all(e.score != pytest.approx(5.0, abs=1e-4) for e in by_ranking)
        agent.settings.trigger_head_none_bias = 0.0
        # a type the head never saw: the rank classification decides, as without a head
        agent.settings.trigger_none_bias = -1e9
        unknown = LABELS.model_copy(update={"event_types": ["Contact:Meet", "Conflict:Attack"]})
        with_head = agent.finish(agent.prepare(TEXT, tasks=("ner", "ee"), labels=unknown), [RAW]).events
        agent.trigger_head = None
        without = agent.finish(agent.prepare(TEXT, tasks=("ner", "ee"), labels=unknown), [RAW]).events
        assert [(e.trigger.text, e.type, e.score) for e in with_head] == [
            (e.trigger.text, e.type, e.score) for e in without]
    finally:
        agent.settings, agent.trigger_head = old_settings, old_head


def test_fit_trigger_head_labels_candidates_by_their_gold_span(agent: Agent) -> None:
    from reamo.tuning.heads import fit_trigger_head, trigger_states

    start = TEXT.index("arrested")
    gold = Result(events=[Event(type="Justice:Arrest-Jail", trigger=Mention(
        text="arrested", span=TextSpan(start=start, end=start + len("arrested"))))])
    examples = [Example(id=f"m2e2:train:{n}", text=TEXT, gold=gold, source="m2e2", split="train") for n in range(2)]
    states, targets, sentences = trigger_states(agent, examples, TYPES, layer=1)
    assert targets == ["Justice:Arrest-Jail", None] * 2 and states.shape == (4, agent.model.llm.config.hidden_size)
    assert sentences == [0, 0, 1, 1]
    head = fit_trigger_head(agent, examples, TYPES, layer=1)
    assert head.config.n_examples == 4 and head.config.n_positive == 2 and head.config.labels == ["None", *TYPES]
    assert head(states).argmax(-1).tolist() == [1, 0, 1, 0]
    # its "None" margin chosen out of fold: each sentence decided by a head fitted on the other one
    out_of_fold = head.config.out_of_fold
    assert out_of_fold is not None and out_of_fold.n_gold == 2 and out_of_fold.n_candidates == 4
    assert out_of_fold.f1 == 1.0 and out_of_fold.folds == 5  # the two sentences are the same text
    two_reads = [StateRead(layer=1), StateRead(layer=1, at="question_end")]
    assert fit_trigger_head(agent, examples, TYPES, layer=two_reads, folds=0).config.out_of_fold is None
    assert trigger_states(agent, examples, TYPES, layer=two_reads).states.shape[1] == 2 * states.shape[1]
    no_events = [e.model_copy(update={"gold": Result()}) for e in examples]
    with pytest.raises(ValueError, match="candidates that are triggers"):
        fit_trigger_head(agent, no_events, TYPES, layer=1)


def test_out_of_fold_margin_keeps_the_bound_on_invented_events() -> None:
    """Half the sentences have a trigger (and a non-trigger), half none; the states overlap, so the best-F1 margin
    gives many event-free sentences an event. A bound keeps their share under it, at a higher margin."""
    from reamo.tuning.heads import out_of_fold_margin

    generator = torch.Generator().manual_seed(1)
    states, targets, sentences = [], [], []
    for sentence in range(200):
        with_event = sentence % 2 == 0
        for is_trigger in ([True, False] if with_event else [False]):
            states.append(torch.randn(4, generator=generator) + (0.4 if is_trigger else -0.4))
            targets.append(TYPES[0] if is_trigger else None)
            sentences.append(sentence)
    event_free = [sentence % 2 == 1 for sentence in range(200)]
    config = head_config(4)
    free = out_of_fold_margin(config, torch.stack(states), targets, sentences, n_gold=100, event_free=event_free)
    assert free.max_invented is None and free.n_event_free == 100 and free.invented >= 0.08
    bound = out_of_fold_margin(config, torch.stack(states), targets, sentences, n_gold=100, event_free=event_free,
                               max_invented=0.03)
    assert bound.max_invented == 0.03 and bound.invented <= 0.03 and bound.bias > free.bias
    assert bound.f1 <= free.f1 and bound.precision > free.precision
    # the share it reports is recounted from the same out-of-fold margins: a bound it already keeps changes nothing
    loose = out_of_fold_margin(config, torch.stack(states), targets, sentences, n_gold=100, event_free=event_free,
                               max_invented=free.invented)
    assert loose.bias == free.bias and loose.invented == free.invented


def test_a_broken_or_foreign_head_is_a_clear_error(tmp_path) -> None:
    from reamo.errors import ConfigError

    head = DecisionHead(head_config(16))
    head.save(tmp_path, "trigger_head")
    (tmp_path / "trigger_head.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot be loaded.*reamo fit-trigger-head"):
        DecisionHead.load(tmp_path, "trigger_head")
    head.save(tmp_path, "trigger_head")
    (tmp_path / "trigger_head.safetensors").write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        DecisionHead.load(tmp_path, "trigger_head")
    DecisionHead(head_config(8)).save(tmp_path, "trigger_head")
    (tmp_path / "trigger_head.json").write_text(head_config(16).model_dump_json(), encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot be loaded"):  # tensors of another width than the config says
        DecisionHead.load(tmp_path, "trigger_head")
    head.check_fits(16, 4, "here")
    with pytest.raises(ConfigError, match="fitted on another model"):
        head.check_fits(32, 4, "here")
    with pytest.raises(ConfigError, match="fitted on another model"):
        DecisionHead(head_config(16, layer=9)).check_fits(16, 4, "here")


def test_fit_trigger_head_command_writes_its_reads_and_out_of_fold_margin(tiny_model_folder: Path) -> None:
    folder = tiny_model_folder
    refused = run_cli("fit-trigger-head", str(folder), "--model", str(folder), "--layer", "1", "--question-end-layer",
                      "99")
    assert refused.exit_code == 2 and "--layer 99" in refused.output
    assert not (folder / "trigger_head.safetensors").exists()
    done = run_cli("fit-trigger-head", str(folder), "--model", str(folder), "--layer", "1", "--layer", "2",
                   "--question-end-layer", "1", "--limit", "40")
    assert done.exit_code == 0, done.output
    head = Agent.from_pretrained(str(folder)).trigger_head
    assert head is not None and [(r.layer, r.at) for r in head.config.reads] == [
        (1, "answer_start"), (2, "answer_start"), (1, "question_end")]
    out_of_fold = head.config.out_of_fold
    assert out_of_fold is not None and out_of_fold.folds == 5 and out_of_fold.n_candidates == head.config.n_examples
    assert out_of_fold.max_invented == 0.075 and out_of_fold.invented is not None and out_of_fold.invented <= 0.075
    from reamo.tuning.decisions import m2e2_for_decisions

    sentences = m2e2_for_decisions("train")[:40]  # every gold trigger counts, those no candidate offers too
    assert out_of_fold.n_gold == sum(1 for e in sentences for event in e.gold.events if event.trigger.span) > 0
    assert 0 < head.config.n_positive < head.config.n_examples
