"""Runs every tool call of a response: validates arguments, runs calls concurrently with a timeout each, and
returns one `ToolResult` per call, failures included, so one bad call never loses the others' results.

Reamo's published code ran only the first call of a response; here all of them run.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import threading
import time
from typing import Any

from pydantic import ValidationError

from reamo.errors import MediaError
from reamo.schema import Grounding, ToolCall, ToolError, ToolResult
from reamo.tools.registry import Tool, ToolRegistry

logger = logging.getLogger(__name__)

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def validate_arguments(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """None when `arguments` fit the tool's schema, else a message naming the first problem."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    parameters = tool.json_schema["function"]["parameters"]
    properties: dict[str, Any] = parameters.get("properties", {})
    for name in parameters.get("required", []):
        if name not in arguments:
            return f"missing required argument {name!r}"
    for name, value in arguments.items():
        if name not in properties:
            return f"unexpected argument {name!r}; {tool.name} takes {', '.join(properties) or 'no arguments'}"
        declared = properties[name].get("type")
        allowed = declared if isinstance(declared, list) else [declared] if declared else []
        if allowed and not any(
            isinstance(value, _JSON_TYPES.get(t, object)) and not (t in ("integer", "number") and isinstance(value, bool))
            for t in allowed
        ):
            return f"argument {name!r} must be {' or '.join(allowed)}, got {type(value).__name__}"
        if isinstance(value, str) and not value.strip() and name == "target":
            return "argument 'target' is empty"
        if "enum" in properties[name] and value not in properties[name]["enum"]:
            return f"argument {name!r} must be one of {properties[name]['enum']}, got {value!r}"
    return None


class Dispatcher:
    """Executes tool calls against the user's media."""

    def __init__(self, registry: ToolRegistry, timeout_s: float = 120.0, max_workers: int = 4) -> None:
        self.registry = registry
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self._serial_locks: dict[str, threading.Lock] = {}

    def _lock_for(self, tool: Tool) -> threading.Lock | None:
        if tool.concurrent:
            return None
        return self._serial_locks.setdefault(tool.name, threading.Lock())

    def _run_one(self, tool: Tool, call: ToolCall, media: Any) -> list[Grounding]:
        lock = self._lock_for(tool)
        if lock is None:
            return tool(media, **call.arguments)
        with lock:
            return tool(media, **call.arguments)

    def run(self, calls: list[ToolCall], media: Any) -> list[ToolResult]:
        """One result per call, in call order."""
        results: dict[str, ToolResult] = {}
        pending: dict[futures.Future, tuple[ToolCall, float]] = {}
        executor = futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="reamo-tool")
        try:
            for call in calls:
                target = call.arguments.get("target") if isinstance(call.arguments, dict) else None
                target = target if isinstance(target, str) else None
                tool = self.registry.get(call.name)
                if tool is None:
                    results[call.id] = _failed(call, target, "unknown_tool", f"unknown tool {call.name!r}; known: {', '.join(self.registry.names())}")
                    continue
                problem = validate_arguments(tool, call.arguments)
                if problem is not None:
                    results[call.id] = _failed(call, target, "bad_arguments", f"{call.name}: {problem}")
                    continue
                pending[executor.submit(self._run_one, tool, call, media)] = (call, time.perf_counter())
            deadline = time.perf_counter() + self.timeout_s
            for future, (call, started) in pending.items():
                target = call.arguments.get("target")
                try:
                    groundings = future.result(timeout=max(0.0, deadline - time.perf_counter()))
                except futures.TimeoutError:
                    future.cancel()
                    results[call.id] = _failed(call, target, "timeout", f"{call.name} did not finish within {self.timeout_s:.0f} s")
                    continue
                except MediaError as err:
                    results[call.id] = _failed(call, target, "missing_media", str(err))
                    continue
                except Exception as err:  # a crashing tool must not take the other calls down
                    logger.exception("tool %s crashed", call.name)
                    results[call.id] = _failed(call, target, "crash", f"{call.name} failed: {err.__class__.__name__}: {err}")
                    continue
                try:
                    results[call.id] = ToolResult(
                        call_id=call.id, name=call.name, target=target, groundings=list(groundings),
                        seconds=time.perf_counter() - started,
                    )
                except ValidationError as err:
                    results[call.id] = _failed(call, target, "crash", f"{call.name} returned invalid groundings: {err}")
        finally:
            # a timed-out tool thread cannot be killed in Python: do not wait for it, just stop using it
            executor.shutdown(wait=False, cancel_futures=True)
        return [results[c.id] for c in calls if c.id in results]


def _failed(call: ToolCall, target: Any, kind: str, message: str) -> ToolResult:
    return ToolResult(
        call_id=call.id,
        name=call.name,
        target=target if isinstance(target, str) else None,
        error=ToolError(kind=kind, message=message),  # type: ignore[arg-type]
    )
