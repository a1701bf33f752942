"""Reamo: grounded multimodal universal information extraction.

`from reamo import Agent, Result` — imported lazily so that `reamo --version` and the schema stay light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Agent", "AgentSettings", "Result", "Entity", "Relation", "Event", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Agent", "AgentSettings"):
        from reamo import agent

        return getattr(agent, name)
    if name in ("Result", "Entity", "Relation", "Event"):
        from reamo import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'reamo' has no attribute {name!r}")
