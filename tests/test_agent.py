"""The Agent: back half on fixed model output (parse -> align -> dispatch -> attach), and the embedded default."""

from __future__ import annotations


import pytest

from reamo.agent import Agent, AgentSettings
from reamo.errors import ConfigError
from reamo.media import MediaBundle, load_audio
from reamo.model import ReamoConfig, ReamoModel
from reamo.schema import Labels, NoRegion, Result, TimeSpan
from reamo.tools.registry import ToolRegistry

TEXT = "Rafael Nadal gets engaged to Mery Perello in Mallorca."


def spoken(media: MediaBundle, target: str, entity_type: str | None = None) -> list:
    """Pretend word search: names with an 'a' are heard.

    Args:
        media: the user's media (injected)
        target: entity text
        entity_type: entity type
    """
    if "a" in target.lower():
        return [TimeSpan(start=1.0, end=2.0, source="test")]
    return [NoRegion(modality="audio", reason="not heard")]


def finished(agent: Agent, raw: str, tasks: tuple, labels: Labels | None, media: MediaBundle | None = None) -> Result:
    """The pipeline's back half on a fixed model output for TEXT (media given as already loaded)."""
    request = agent.prepare(TEXT, tasks=tasks, labels=labels)
    if labels is not None:  # as given (Labels() = any type), not filled with the defaults
        request = request.model_copy(update={"labels": labels})
    if media is not None:
        request = request.model_copy(update={
            "media": media, "modalities": [m for m in ("image", "video", "audio") if getattr(media, m) is not None]})
    return agent.finish(request, [raw])


@pytest.fixture(scope="module")
def tiny_agent(tiny_llm_dir) -> Agent:
    registry = ToolRegistry()
    registry.register("AudioSegmentation", "audio", spoken)
    return Agent(ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir))), registry=registry)


def test_back_half_parses_aligns_dispatches_and_attaches(tiny_agent: Agent) -> None:
    raw = (
        "Entities: (Rafael Nadal, PER)(Mery Perello, PER)(Mallorca, LOC)(Roger Federer, PER)\n"
        "Relations: (Rafael Nadal, couple, Mery Perello)\n"
        "<Module>AudioSegmentation</Module><Instruction>rafael  nadal</Instruction>"
        "<Module>AudioSegmentation</Module><Instruction>Someone Else</Instruction>"
        "<Module>ImageSegmentation</Module><Instruction>Mallorca</Instruction>"
    )
    import numpy as np

    media = MediaBundle(audio=load_audio(np.zeros(16000, dtype=np.float32)))
    result = finished(tiny_agent, raw, ("ner", "re"), None, media)
    assert [(e.text, TEXT[e.span.start : e.span.end]) for e in result.entities] == [
        ("Rafael Nadal", "Rafael Nadal"), ("Mery Perello", "Mery Perello"), ("Mallorca", "Mallorca"),
    ]
    assert any("Roger Federer" in p.message for p in result.problems)  # not in the text: dropped, reported
    nadal = result.entities[0]
    assert isinstance(nadal.grounding("audio"), TimeSpan)
    # every call ran: 3 from the model + auto-grounding for the 2 entities the model did not ground
    assert len(result.tool_results) == 5
    assert {r.call_id for r in result.tool_results} == {c.id for c in result.tool_calls}
    assert any("Someone Else" in p.message and "matches no extracted entity" in p.message for p in result.problems)
    assert any("unknown tool 'ImageSegmentation'" in p.message for p in result.problems)
    assert isinstance(result.entities[2].grounding("audio"), TimeSpan)  # auto-grounded "Mallorca"
    assert Result.model_validate_json(result.to_json()) == result


def test_types_outside_the_requested_labels_are_dropped_and_reported(tiny_agent: Agent) -> None:
    # a garbled speech transcript made the model split an entity line at the wrong comma
    raw = (
        "Entities: (Rafael Nadal, per)(Mery, Perello PER)(Mallorca, LOC)\n"
        "Relations: (Rafael Nadal, couple, Mery)(Rafael Nadal, engaged_to, Mallorca)\n"
        "Events: [Life:Marry | engaged | Person: Rafael Nadal][Life:Engage | engaged | Person: Mery]"
    )
    labels = Labels(entity_types=["PER", "LOC"], relation_types=["couple"], event_types=["Life:Marry"])
    result = finished(tiny_agent, raw, ("ner", "re", "ee"), labels)
    assert [(e.text, e.type) for e in result.entities] == [("Rafael Nadal", "PER"), ("Mallorca", "LOC")]
    assert [(r.head.text, r.type, r.tail.text) for r in result.relations] == [("Rafael Nadal", "couple", "Mery")]
    assert [e.type for e in result.events] == ["Life:Marry"]
    dropped = [p.message for p in result.problems if p.message.startswith("dropped")]
    assert len(dropped) == 3
    assert "'Perello PER'" in dropped[0] and "labels.entity_types" in dropped[0]
    assert "'engaged_to'" in dropped[1] and "labels.relation_types" in dropped[1]
    assert "'Life:Engage'" in dropped[2] and "labels.event_types" in dropped[2]
    # only the asked tasks are checked: no problems about relations or events nobody asked for
    only_ner = finished(tiny_agent, raw, ("ner",), labels)
    assert [p.message for p in only_ner.problems if p.message.startswith("dropped")] == dropped[:1]
    # empty label lists allow any type
    anything = finished(tiny_agent, raw, ("ner",), Labels())
    assert [e.type for e in anything.entities] == ["per", "Perello PER", "LOC"]


def test_extract_runs_the_whole_chain_on_a_tiny_model(tiny_agent: Agent) -> None:
    result = tiny_agent.extract(text=TEXT, tasks="ner", max_new_tokens=8)
    assert result.tasks == ["ner"] and result.raw_output is not None
    assert set(result.timings) >= {"generate", "tools", "total"}


def test_bad_requests_are_clear_errors(tiny_agent: Agent) -> None:
    with pytest.raises(ConfigError, match="nothing to extract"):
        tiny_agent.extract()
    with pytest.raises(ConfigError, match="unknown task"):
        tiny_agent.extract(text="x", tasks="ner,sentiment")


def test_embedded_default_extracts_a_parsed_result() -> None:
    agent = Agent.from_pretrained("default", max_new_tokens=60)
    result = agent.extract(text=TEXT, tasks=("ner", "re"))
    assert result.raw_output.strip()
    assert result.entities, result.raw_output
    for entity in result.entities:
        assert TEXT[entity.span.start : entity.span.end].casefold() == entity.text.casefold()
    assert Result.model_validate_json(result.to_json()) == result
    message = agent.chat([{"role": "user", "content": "Who is Rafael Nadal?"}], max_new_tokens=20)
    assert message["role"] == "assistant" and isinstance(message["content"], str)


def test_the_default_loads_its_shipped_writer_adapter(tmp_path, monkeypatch) -> None:
    """The package's `writer_adapter/` is loaded into its own copy of the LLM (folded in, as the adapter is); a
    package without one runs on the adapter alone, and with the shipped adapter itself as the writer the default
    writes exactly what it writes alone (the writer changes who writes, nothing else)."""
    import shutil

    from reamo.model import embedded_default

    shipped = Agent.from_pretrained("default", max_new_tokens=60)
    assert shipped.model.writer_llm is not None and shipped.model.writer_llm is not shipped.model.llm
    assert not any("lora_" in name for name, _ in shipped.model.writer_llm.named_parameters())  # folded in
    monkeypatch.setattr(embedded_default, "SHIPPED_WRITER", tmp_path / "no_writer")
    alone = Agent.from_pretrained("default", max_new_tokens=60)
    assert alone.model.writer_llm is None
    shutil.copytree(embedded_default.SHIPPED_ADAPTER, tmp_path / "writer_adapter")
    monkeypatch.setattr(embedded_default, "SHIPPED_WRITER", tmp_path / "writer_adapter")
    agent = Agent.from_pretrained("default", max_new_tokens=60)
    assert agent.model.writer_llm is not None
    written = agent.extract(text=TEXT, tasks=("ner", "re"))
    assert written.raw_output == alone.extract(text=TEXT, tasks=("ner", "re")).raw_output
    assert {("Rafael Nadal", "PER"), ("Mery Perello", "PER")} <= {(e.text, e.type) for e in written.entities}


def test_embedded_default_types_triggers_with_its_head_and_invents_no_event() -> None:
    """The shipped trigger head decides the default label set (M2E2's eight types) and the argument head the roles:
    the arrest is found with its place, a caption with no event stays without one (rank classification had also kept "Police" and "suspect")."""
    agent = Agent.from_pretrained("default", max_new_tokens=60)
    assert agent.trigger_head is not None and agent.settings.trigger_head_none_bias is not None
    text = "Police arrested the suspect in Paris on Monday."
    events = agent.extract(text=text, tasks=("ner", "ee")).events
    assert [(e.type, e.trigger.text) for e in events] == [("Justice:Arrest-Jail", "arrested")]
    assert events[0].score > agent.settings.trigger_head_none_bias
    assert [(a.role, a.entity.text) for a in events[0].arguments] == [("Place", "Paris")]
    assert agent.argument_head is not None and agent.settings.argument_head_none_bias is not None  # roles by its head
    assert events[0].arguments[0].score > agent.settings.argument_head_none_bias
    caption = "NASA astronaut Eileen Collins poses for a portrait at the Johnson Space Center in Houston."
    assert agent.extract(text=caption, tasks=("ner", "ee")).events == []


def test_embedded_default_finds_full_triples_with_its_triple_head() -> None:
    """Asked with MNRE's relation names (which the triple head was fitted on), the default's full triples are
    decided by its triple head with the head's own calibrated margin; without that margin, by rank classification."""
    from reamo.eval.runner import DATASETS

    agent = Agent.from_pretrained("default", max_new_tokens=60)
    assert agent.triple_head is not None and agent.settings.triple_head_none_bias is not None
    text = "Lionel Messi signs for Inter Miami."
    labels = DATASETS["mnre"].labels

    def triples() -> dict[tuple[str, str, str], float]:
        relations = agent.extract(text=text, tasks=("ner", "re"), labels=labels).relations
        return {(r.head.text, r.type, r.tail.text): r.score for r in relations}

    by_head = triples()
    assert list(by_head) == [("Lionel Messi", "member_of", "Inter Miami")], by_head
    assert by_head[("Lionel Messi", "member_of", "Inter Miami")] > agent.settings.triple_head_none_bias
    agent.settings.triple_head_none_bias = None
    by_ranking = triples()
    assert list(by_ranking) == list(by_head) and by_ranking != by_head  # the same answer on another scale


def test_given_entity_pairs_reach_the_prompt_and_bad_pairs_are_clear_errors(tiny_agent: Agent) -> None:
    request = tiny_agent.prepare(TEXT, None, None, None, ("re",), None, [("Rafael Nadal", "Mery Perello")])
    assert "Entity pairs: (Rafael Nadal; Mery Perello)" in request.prompt
    assert "given entity pairs" in request.prompt
    plain = tiny_agent.prepare(TEXT, None, None, None, ("re",), None)
    assert "Entity pairs" not in plain.prompt
    with pytest.raises(ConfigError, match="no 're'"):
        tiny_agent.prepare(TEXT, None, None, None, ("ner",), None, [("Rafael Nadal", "Mery Perello")])
    with pytest.raises(ConfigError, match="bad entity pair"):
        tiny_agent.prepare(TEXT, None, None, None, ("re",), None, [("Rafael Nadal",)])


def test_continuation_logprobs_equal_a_full_forward_pass(tiny_agent: Agent) -> None:
    import torch

    model = tiny_agent.model
    prompt = tiny_agent.prepare(TEXT, None, None, None, ("ner",), None).prompt
    options = ["Entities: None", "Entities: (Rafael Nadal, PER)", "Entities: (Mallorca, LOC)(Rafael Nadal, PER)"]
    scores = model.continuation_logprobs(prompt, {}, options)
    for option, score in zip(options, scores, strict=True):
        prompt_ids = model.tokenize_with_placeholders(prompt)
        answer = model.tokenizer(option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model.llm(input_ids=torch.tensor([prompt_ids + answer])).logits[0].float().log_softmax(-1)
        expected = sum(float(logits[len(prompt_ids) - 1 + i, token]) for i, token in enumerate(answer))
        assert score == pytest.approx(expected, abs=1e-3)


def test_given_pairs_are_ranked_over_none_and_every_offered_relation(tiny_agent: Agent) -> None:
    from reamo.decisions import classify_given_pairs
    from reamo.pipeline import pair_prompt

    pair = ("Rafael Nadal", "Mery Perello")
    labels = {"relation_types": ["couple", "peer", "member_of"]}
    request = tiny_agent.prepare(TEXT, None, None, None, ("re",), labels, [pair])
    end = tiny_agent.model.tokenizer.eos_token
    scores = tiny_agent.model.continuation_logprobs(
        pair_prompt(tiny_agent, request, pair).prompt, {},
        [f"Relations: None{end}"] + [f"Relations: (Rafael Nadal, {r}," for r in labels["relation_types"]],
    )
    best = max(range(3), key=lambda i: scores[i + 1])
    margin = scores[best + 1] - scores[0]
    old = tiny_agent.settings.pair_none_bias
    try:
        tiny_agent.settings.pair_none_bias = margin + 0.01  # the best relation does not beat None by enough
        assert classify_given_pairs(tiny_agent, [request])[0][0] == "Relations: None"
        tiny_agent.settings.pair_none_bias = margin - 0.01
        expected = f"Relations: (Rafael Nadal, {labels['relation_types'][best]}, Mery Perello)"
        assert classify_given_pairs(tiny_agent, [request])[0][0] == expected
        result = tiny_agent.extract(TEXT, tasks=("re",), labels=labels, pairs=[pair])
        assert result.raw_output == expected
        assert [(r.head.text, r.type, r.tail.text) for r in result.relations] == [
            ("Rafael Nadal", labels["relation_types"][best], "Mery Perello")]
        assert result.relations[0].score == pytest.approx(margin, abs=1e-4)  # the user sees how sure it was
        two = tiny_agent.prepare(TEXT, None, None, None, ("re",), labels, [pair, ("Mery Perello", "Mallorca")])
        # each pair asked on its own, answers joined
        assert classify_given_pairs(tiny_agent, [two])[0][0].startswith(expected)
        # batched with other requests: the same answers
        batch = tiny_agent.extract_batch([TEXT, TEXT], tasks=("re",), labels=labels, pairs=[[pair], None])
        assert batch[0].raw_output == expected
    finally:
        tiny_agent.settings.pair_none_bias = old


def test_written_events_are_kept_only_above_the_event_margin(tiny_agent: Agent) -> None:
    from reamo.decisions import event_margin_item

    text = "Troops attacked the village of Mallorca"
    raw = "Entities: (Mallorca, LOC)\nEvents: [Conflict:Attack | attacked | Place: Mallorca]"
    request = tiny_agent.prepare(text, None, None, None, ("ner", "ee"), None)
    item = event_margin_item(request.prompt, request.segments[0].prefix, raw, {})
    with_event, without = tiny_agent.model.continuation_logprobs(
        request.prompt + "Entities: (Mallorca, LOC)\n", {}, ["Events: [", "Events: None"])
    assert item is not None and item.prompt == request.prompt + "Entities: (Mallorca, LOC)\n"
    margin = with_event - without
    assert event_margin_item(request.prompt, "", "Entities: (Mallorca, LOC)\nEvents: None", {}) is None

    old = tiny_agent.settings.event_none_bias
    try:
        tiny_agent.settings.event_none_bias = None  # no decision: what greedy decoding wrote stays
        assert [e.type for e in tiny_agent.finish(request, [raw]).events] == ["Conflict:Attack"]
        tiny_agent.settings.event_none_bias = margin - 0.01
        kept = tiny_agent.finish(request, [raw]).events
        assert kept and kept[0].score == pytest.approx(margin, abs=1e-4)
        tiny_agent.settings.event_none_bias = margin + 0.01
        dropped = tiny_agent.finish(request, [raw])
        assert dropped.events == [] and [e.text for e in dropped.entities] == ["Mallorca"]
        assert any("event_none_bias" in p.message for p in dropped.problems)
    finally:
        tiny_agent.settings.event_none_bias = old


def test_text_only_prompts_leave_out_the_tool_call_instructions(tiny_agent: Agent) -> None:
    import numpy as np

    old = tiny_agent.settings.few_shot
    try:
        tiny_agent.settings.few_shot = False  # as a tuned model is prompted (few-shot turns show tool calls)
        text_only = tiny_agent.prepare(TEXT, None, None, None, ("ner",), None)
        assert "<Module>ImageSegmentation</Module>" not in text_only.prompt
        image = np.full((32, 32, 3), 200, dtype=np.uint8)
        with_image = tiny_agent.prepare(TEXT, image, None, None, ("ner",), None)
        assert "<Module>ImageSegmentation</Module><Instruction>entity text</Instruction>" in with_image.prompt
        assert "[image attached]" in with_image.prompt
    finally:
        tiny_agent.settings.few_shot = old


def test_shipped_settings_skip_provenance_keys(tmp_path, monkeypatch) -> None:
    import json

    from reamo.model import embedded_default

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"pair_none_bias": 0.2, "_about": {"x": 1}}))
    monkeypatch.setattr(embedded_default, "SHIPPED_SETTINGS", path)
    assert embedded_default.shipped_settings() == {"pair_none_bias": 0.2}
    monkeypatch.setattr(embedded_default, "SHIPPED_SETTINGS", tmp_path / "absent.json")
    assert embedded_default.shipped_settings() == {}


def test_a_call_without_entity_type_gets_the_type_of_the_entity_it_names(tiny_llm_dir) -> None:
    """The model's `<Instruction>Eileen Collins</Instruction>` carries no type, so the image tool would not look for
    a face; the agent fills it from the extracted entity (issue 27), and entities no call covers are grounded too."""
    import numpy as np

    from reamo.media import load_image
    from reamo.schema import ImageRegion

    seen: list[tuple[str, str | None]] = []

    def segment(media: MediaBundle, target: str, entity_type: str | None = None) -> list:
        """Finds persons only when told the target is one.

        Args:
            media: the user's media (injected)
            target: entity text
            entity_type: entity type
        """
        seen.append((target, entity_type))
        if entity_type == "PER":
            return [ImageRegion(box={"x1": 1, "y1": 1, "x2": 5, "y2": 5}, score=0.9, source="test")]
        return [NoRegion(modality="image", reason="not a person")]

    registry = ToolRegistry()
    registry.register("ImageSegmentation", "image", segment)
    agent = Agent(ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir))), registry=registry,
                  settings=AgentSettings(few_shot=False))
    text = "NASA astronaut Eileen Collins poses in front of the flag."
    raw = ("Entities: (NASA, ORG)(Eileen Collins, PER)\n"
           "<Module>ImageSegmentation</Module><Instruction>Eileen Collins</Instruction>")
    request = agent.prepare(text, tasks=("ner",))
    media = MediaBundle(image=load_image(np.full((32, 32, 3), 128, dtype=np.uint8)))
    request = request.model_copy(update={"media": media, "modalities": ["image"]})
    result = agent.finish(request, [raw])
    assert ("Eileen Collins", "PER") in seen and ("NASA", "ORG") in seen  # the model's call, typed; NASA auto
    collins = next(e for e in result.entities if e.text == "Eileen Collins")
    assert isinstance(collins.grounding("image"), ImageRegion)


def test_with_text_and_audio_entities_come_from_the_text_and_the_transcript_adds_what_it_lacks(
        tiny_agent: Agent, monkeypatch) -> None:
    """Issue 27: the model copied misheard transcript names ("Tim Cook" heard as "Tim Cock") that aligned nowhere
    and lost the text's entities. The text windows' prompts no longer carry the transcript; the transcript is read
    on its own and adds only entities the text does not name (with no text span)."""
    import numpy as np

    from reamo.tools import audio as audio_tools

    heard = "Tim Cock met Olaf Scholz and Greta Thunberg in Berlin."
    asked = []

    class Heard:
        def transcribe(self, audio: object) -> audio_tools.Transcript:
            asked.append(audio)
            return audio_tools.Transcript(text=heard)

    monkeypatch.setattr(audio_tools, "default_transcriber", lambda: Heard())
    text = "Tim Cook met Olaf Scholz in Berlin."
    request = tiny_agent.prepare(text, audio=np.zeros(16000, dtype=np.float32), tasks=("ner",))
    assert len(asked) == 1  # no context line is built and thrown away: the transcript is read once, as a segment
    texts, transcripts = request.text_segments, [s for s in request.segments if s.transcript]
    assert len(texts) == 1 and "Tim Cock" not in texts[0].prompt and "Text: Tim Cook met" in texts[0].prompt
    assert len(transcripts) == 1 and transcripts[0].window.text == heard
    raws = ["Entities: (Tim Cook, PER)(Olaf Scholz, PER)(Berlin, LOC)",
            "Entities: (Tim Cock, PER)(Olaf Scholz, PER)(Greta Thunberg, PER)(Berlin, LOC)"]
    result = tiny_agent.finish(request, raws)
    found = {e.text: e.span for e in result.entities}
    assert set(found) == {"Tim Cook", "Olaf Scholz", "Berlin", "Greta Thunberg"}  # "Tim Cock" is Tim Cook, misheard
    assert found["Greta Thunberg"] is None and text[found["Tim Cook"].start:found["Tim Cook"].end] == "Tim Cook"
    assert any("heard in the audio" in p.message and "Greta Thunberg" in p.message for p in result.problems)

    class Deaf:
        def transcribe(self, audio: object) -> audio_tools.Transcript:
            raise RuntimeError("decoder crashed")

    monkeypatch.setattr(audio_tools, "default_transcriber", lambda: Deaf())
    request = tiny_agent.prepare(text, audio=np.zeros(16000, dtype=np.float32), tasks=("ner",))
    assert len(request.segments) == 1 and not request.segments[0].transcript
    assert any("could not transcribe the audio" in p.message and "decoder crashed" in p.message
               for p in request.problems)


def test_bad_arguments_are_refused_before_any_model_work(tiny_agent: Agent) -> None:
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match="max_new_tokens must be a positive integer"):
            tiny_agent.extract(text=TEXT, max_new_tokens=bad)
    with pytest.raises(ConfigError, match="nothing to extract"):
        tiny_agent.extract(text="   \n\t ")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        tiny_agent.extract(text=b"caf\xe9")
    with pytest.raises(ConfigError, match="labels cannot be a int"):
        tiny_agent.extract(text=TEXT, labels=123)
    assert tiny_agent.extract(text=TEXT, labels="PER", tasks="ner", max_new_tokens=4).tasks == ["ner"]


def test_a_tool_that_crashes_on_an_input_becomes_a_problem_of_that_input(tiny_agent: Agent, monkeypatch) -> None:
    import numpy as np

    from reamo import pipeline

    def broken(modality: str, item: object) -> str:
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")

    monkeypatch.setattr(pipeline, "describe", broken)
    result = tiny_agent.extract(text=TEXT, image=np.full((10, 10, 3), 9, dtype=np.uint8), tasks="ner",
                                max_new_tokens=4)
    assert any(p.stage == "media" and "could not describe the image" in p.message for p in result.problems)


def test_total_time_counts_every_stage(tiny_agent: Agent) -> None:
    old = tiny_agent.settings.model_copy()
    try:
        tiny_agent.settings.event_none_bias = -1e9  # the event decision runs when events were written
        result = tiny_agent.finish(tiny_agent.prepare(TEXT, tasks=("ner", "ee")),
                                   ["Entities: (Mallorca, LOC)\nEvents: [Life:Marry | engaged]"])
        stages = {k: v for k, v in result.timings.items() if k != "total"}
        assert {"decide", "tools"} <= set(stages) and result.timings["total"] >= sum(stages.values())
    finally:
        tiny_agent.settings = old
