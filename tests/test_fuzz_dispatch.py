"""Fuzzing model output end to end: arbitrary protocol-ish text -> parser -> dispatcher never crashes and never
runs a tool with arguments that break its schema."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reamo.media import MediaBundle
from reamo.protocol import parse
from reamo.schema import TimeSpan
from reamo.tools.dispatcher import Dispatcher
from reamo.tools.registry import ToolRegistry

SEEN: list[dict] = []


def record(media: MediaBundle, target: str, entity_type: str | None = None) -> list:
    """Record the arguments the tool really received.

    Args:
        media: injected
        target: entity text
        entity_type: entity type
    """
    SEEN.append({"target": target, "entity_type": entity_type})
    return [TimeSpan(start=0.0, end=1.0)]


REGISTRY = ToolRegistry()
REGISTRY.register("AudioSegmentation", "audio", record)
DISPATCHER = Dispatcher(REGISTRY, timeout_s=5)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
modules = st.sampled_from(["AudioSegmentation", "ImageSegmentation", "VideoTracking", "", "Audio Segmentation", "<Module>"])
instructions = st.one_of(
    st.text(max_size=30),
    st.dictionaries(st.sampled_from(["target", "entity_type", "path", "x"]), json_values, max_size=3).map(json.dumps),
)
pieces = st.one_of(
    st.builds(lambda m, i: f"<Module>{m}</Module><Instruction>{i}</Instruction>", modules, instructions),
    st.builds(lambda m: f"<Module>{m}", modules),
    st.builds(lambda i: f"<Instruction>{i}", instructions),
    st.sampled_from(["</Module>", "</Instruction>", "Entities:", "(a, PER)", "[x | y]", "\n", "Events: [", "\\"]),
    st.text(max_size=10),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pieces, max_size=12).map("".join))
def test_model_output_fuzz(text: str) -> None:
    SEEN.clear()
    parsed = parse(text)
    results = DISPATCHER.run(parsed.tool_calls, MediaBundle())
    assert len(results) == len(parsed.tool_calls)
    for seen in SEEN:  # every argument a tool received fits its schema
        assert isinstance(seen["target"], str) and seen["target"].strip()
        assert seen["entity_type"] is None or isinstance(seen["entity_type"], str)
    ok = [r for r in results if r.ok]
    assert len(ok) == len(SEEN)


def test_huge_output_is_parsed_in_bounded_time() -> None:
    import time

    text = "Entities: " + "(Rafael Nadal, PER)" * 20000 + "<Module>AudioSegmentation</Module><Instruction>x" * 2000
    started = time.perf_counter()
    parsed = parse(text)
    assert len(parsed.entities) == 20000 and parsed.problems
    assert time.perf_counter() - started < 30
