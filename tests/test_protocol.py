"""The output protocol: round trip (property-based), Reamo's published format, recovery from broken output."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reamo.errors import ProtocolError
from reamo.protocol import ParsedOutput, parse, serialize_parsed
from reamo.schema import Argument, Entity, Event, Mention, Relation, ToolCall

field = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x85\u2028\u2029") | st.sampled_from("(),[]|;:<>\\\n"),
    min_size=1,
    max_size=20,
).map(str.strip).filter(bool)
label = st.from_regex(r"[A-Za-z][A-Za-z_:\-]{0,12}", fullmatch=True)
tool_name = st.sampled_from(["ImageSegmentation", "VideoTracking", "AudioSegmentation", "Custom_Tool"])
json_value = st.one_of(st.text(max_size=10), st.integers(-5, 5), st.booleans(), st.none())


@st.composite
def parsed_outputs(draw: st.DrawFn) -> ParsedOutput:
    entities = [Entity(text=draw(field), type=draw(label)) for _ in range(draw(st.integers(0, 3)))]
    relations = [
        Relation(head=Mention(text=draw(field)), type=draw(label), tail=Mention(text=draw(field)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    events = [
        Event(
            type=draw(label),
            trigger=Mention(text=draw(field)),
            arguments=[Argument(role=draw(field), entity=Mention(text=draw(field))) for _ in range(draw(st.integers(0, 2)))],
        )
        for _ in range(draw(st.integers(0, 2)))
    ]
    calls = []
    for i in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            arguments = {"target": draw(field)}
        else:
            arguments = draw(st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), json_value, max_size=3))
        calls.append(ToolCall(id=f"call_{i}", name=draw(tool_name), arguments=arguments))
    return ParsedOutput(entities=entities, relations=relations, events=events, tool_calls=calls)


@settings(max_examples=300, deadline=None)
@given(parsed_outputs())
def test_serialize_then_parse_is_identity(original: ParsedOutput) -> None:
    text = serialize_parsed(original)
    back = parse(text)
    assert back.problems == [], (text, back.problems)
    assert back.content() == original.content(), text


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes(text: str) -> None:
    out = parse(text)
    for problem in out.problems:
        assert 0 <= problem.position <= len(text)
        assert problem.line >= 1 and problem.column >= 1


@settings(max_examples=300, deadline=None)
@given(parsed_outputs(), st.integers(0, 400))
def test_truncated_output_keeps_complete_items(original: ParsedOutput, cut: int) -> None:
    text = serialize_parsed(original)
    out = parse(text[:cut])
    # whatever was read from a prefix is a prefix of what the whole text holds
    assert out.entities == original.entities[: len(out.entities)]
    assert out.relations == original.relations[: len(out.relations)]


def test_reamo_published_format_without_headers() -> None:
    text = (
        "The entities are (Rafael Nadal, person)(Mery Perello, person)(Mallorca, location).\n"
        "<Module>ImageSegmentation</Module><Instruction>Rafael Nadal</Instruction>"
        "<Module>AudioSegmentation</Module><Instruction>Mery Perello</Instruction>"
    )
    out = parse(text)
    assert [(e.text, e.type) for e in out.entities] == [
        ("Rafael Nadal", "person"), ("Mery Perello", "person"), ("Mallorca", "location"),
    ]
    assert [(c.name, c.arguments) for c in out.tool_calls] == [
        ("ImageSegmentation", {"target": "Rafael Nadal"}),
        ("AudioSegmentation", {"target": "Mery Perello"}),
    ]
    assert out.problems == []


def test_rich_form_with_sections_json_arguments_and_events() -> None:
    text = (
        "Entities: (Rafael Nadal, PER)(Mallorca, LOC)\n"
        "Relations: (Rafael Nadal, couple, Mery Perello)\n"
        "Events: [Life:Marry | engaged | Person: Rafael Nadal; Place: Mallorca]\n"
        '<Module>VideoTracking</Module><Instruction>{"target": "Rafael Nadal", "entity_type": "PER"}</Instruction>'
    )
    out = parse(text)
    assert out.problems == []
    assert out.relations[0].type == "couple" and out.relations[0].tail.text == "Mery Perello"
    event = out.events[0]
    assert (event.type, event.trigger.text) == ("Life:Marry", "engaged")
    assert [(a.role, a.entity.text) for a in event.arguments] == [("Person", "Rafael Nadal"), ("Place", "Mallorca")]
    assert out.tool_calls[0].arguments == {"target": "Rafael Nadal", "entity_type": "PER"}


def test_every_tool_call_is_kept_not_only_the_first() -> None:
    calls = "".join(f"<Module>ImageSegmentation</Module><Instruction>e{i}</Instruction>" for i in range(5))
    assert [c.arguments["target"] for c in parse(calls).tool_calls] == [f"e{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("text", "expected_problem"),
    [
        ("Entities: (Rafael Nadal, PER)(Mallorca", "unterminated '('"),
        ("<Module>ImageSegmentation</Module><Instruction>Rafael Na", "unterminated <Instruction>"),
        ("<Module>ImageSegmentation", "unterminated <Module>"),
        ("<Module>ImageSegmentation</Module> and nothing", "has no <Instruction>"),
        ("Relations: (a, b)", "relation needs 3 fields"),
        ("Events: [Attack]", "event needs at least"),
        ("Events: [Attack | fired | Target]", "without 'role: text'"),
        ("junk </Instruction> junk", "stray </Instruction>"),
        ('<Module>X</Module><Instruction>{"target": </Instruction>', "does not parse"),
    ],
)
def test_malformed_output_is_reported_with_position(text: str, expected_problem: str) -> None:
    out = parse(text)
    assert any(expected_problem in p.message for p in out.problems), out.problems
    with pytest.raises(ProtocolError) as info:
        parse(text, strict=True)
    assert info.value.line >= 1 and info.value.position >= 0


def test_partial_recovery_keeps_good_items_around_a_bad_one() -> None:
    text = "Entities: (A, PER)(B\n(C, LOC)\nRelations: (A, x)(A, knows, C)"
    out = parse(text)
    assert [e.text for e in out.entities] == ["A", "C"]
    assert [(r.head.text, r.type, r.tail.text) for r in out.relations] == [("A", "knows", "C")]
    assert len(out.problems) == 2
    assert out.problems[0].line == 1 and out.problems[1].line == 3


def test_unescaped_comma_in_entity_text_is_recovered_with_a_problem() -> None:
    out = parse("Entities: (Washington, D.C., LOC)")
    assert [(e.text, e.type) for e in out.entities] == [("Washington, D.C.", "LOC")]
    assert len(out.problems) == 1
