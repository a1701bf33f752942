"""The dispatcher runs every call, validates arguments against the derived schema, and isolates failures."""

from __future__ import annotations

import threading
import time

import pytest

from reamo.media import MediaBundle
from reamo.schema import NoRegion, TimeSpan, ToolCall
from reamo.tools.dispatcher import Dispatcher
from reamo.tools.registry import ToolRegistry


def find_word(media: MediaBundle, target: str, entity_type: str | None = None) -> list:
    """Find the target's time span in the audio.

    Args:
        media: the user's media (injected)
        target: entity text to find
        entity_type: the entity's type when known
    """
    if target == "boom":
        raise RuntimeError("backend exploded")
    if target == "absent":
        return [NoRegion(modality="audio", reason="not spoken")]
    return [TimeSpan(start=float(len(target)), end=float(len(target)) + 0.5, source="test")]


def slow(media: MediaBundle, target: str) -> list:
    """Sleep longer than the timeout.

    Args:
        media: the user's media (injected)
        target: anything
    """
    time.sleep(5)
    return []


@pytest.fixture()
def registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register("AudioSegmentation", "audio", find_word)
    registry.register("Slow", "audio", slow)
    return registry


def test_schema_is_derived_from_signature_and_docstring_without_media(registry: ToolRegistry) -> None:
    schema = registry.get("AudioSegmentation").json_schema
    params = schema["function"]["parameters"]
    assert schema["function"]["name"] == "AudioSegmentation"
    assert set(params["properties"]) == {"target", "entity_type"}
    assert params["required"] == ["target"]
    assert params["properties"]["target"]["description"] == "entity text to find"


def test_every_call_runs_and_failures_are_isolated(registry: ToolRegistry) -> None:
    calls = [
        ToolCall(id="c0", name="AudioSegmentation", arguments={"target": "Nadal"}),
        ToolCall(id="c1", name="Nope", arguments={"target": "x"}),
        ToolCall(id="c2", name="AudioSegmentation", arguments={"target": 42}),
        ToolCall(id="c3", name="AudioSegmentation", arguments={"target": "boom"}),
        ToolCall(id="c4", name="AudioSegmentation", arguments={"target": "Mallorca", "colour": "red"}),
        ToolCall(id="c5", name="AudioSegmentation", arguments={}),
        ToolCall(id="c6", name="AudioSegmentation", arguments={"target": "absent"}),
        ToolCall(id="c7", name="AudioSegmentation", arguments={"target": "Federer", "entity_type": "PER"}),
    ]
    results = Dispatcher(registry).run(calls, MediaBundle())
    assert [r.call_id for r in results] == [c.id for c in calls]
    kinds = [r.error.kind if r.error else "ok" for r in results]
    assert kinds == ["ok", "unknown_tool", "bad_arguments", "crash", "bad_arguments", "bad_arguments", "ok", "ok"]
    assert results[0].groundings[0].start == 5.0 and results[7].groundings[0].start == 7.0
    assert "backend exploded" in results[3].error.message
    assert "colour" in results[4].error.message and "target" in results[5].error.message
    assert isinstance(results[6].groundings[0], NoRegion)


def test_a_hanging_tool_is_cut_at_its_timeout(registry: ToolRegistry) -> None:
    started = time.perf_counter()
    results = Dispatcher(registry, timeout_s=0.5).run(
        [ToolCall(id="a", name="Slow", arguments={"target": "x"}),
         ToolCall(id="b", name="AudioSegmentation", arguments={"target": "ok"})],
        MediaBundle(),
    )
    assert time.perf_counter() - started < 3
    assert results[0].error.kind == "timeout" and results[1].ok


def test_independent_calls_run_concurrently() -> None:
    barrier = threading.Barrier(3, timeout=5)

    def meet(media: MediaBundle, target: str) -> list:
        """Wait until three calls are running at once.

        Args:
            media: injected
            target: anything
        """
        barrier.wait()
        return []

    registry = ToolRegistry()
    registry.register("Meet", "image", meet)
    calls = [ToolCall(id=str(i), name="Meet", arguments={"target": "t"}) for i in range(3)]
    assert all(r.ok for r in Dispatcher(registry, timeout_s=10).run(calls, MediaBundle()))


def test_tool_without_media_parameter_is_rejected() -> None:
    def bad(target: str) -> list:
        """Bad.

        Args:
            target: anything
        """
        return []

    with pytest.raises(TypeError, match="media"):
        ToolRegistry().register("Bad", "image", bad)
