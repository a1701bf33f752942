"""Tools the LLM may call, registered by name with a JSON schema derived from each function's signature.

A tool is a plain function `fn(media: MediaBundle, <model-visible args>) -> list[Grounding]`. The `media`
parameter is injected by the dispatcher, so the schema offered to the model (through the chat template's `tools`)
leaves it out; the rest comes from type hints and the Google-style docstring via
`transformers.utils.get_json_schema`, as transformers does for chat-template tools.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

ToolModality = Literal["image", "video", "audio"]
ToolFunction = Callable[..., list]


class Tool(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    name: str
    modality: ToolModality
    function: Any  # ToolFunction; Any keeps pydantic from wrapping the callable
    json_schema: dict[str, Any]
    concurrent: bool = True  # False: the backend is not thread-safe, run its calls one after another

    def __call__(self, media: Any, **arguments: Any) -> list:
        return self.function(media, **arguments)


def model_visible_schema(function: ToolFunction, name: str) -> dict[str, Any]:
    """JSON schema of `function` without its first (`media`) parameter, named `name`."""
    from transformers.utils import get_json_schema

    signature = inspect.signature(function)
    params = list(signature.parameters.values())
    if not params or params[0].name != "media":
        raise TypeError(f"tool {name}: the first parameter must be `media` (the injected MediaBundle)")

    @functools.wraps(function)
    def visible(*args: Any, **kwargs: Any) -> Any:  # only inspected, never called
        return function(*args, **kwargs)

    visible.__signature__ = signature.replace(parameters=params[1:])  # type: ignore[attr-defined]
    visible.__annotations__ = {k: v for k, v in getattr(function, "__annotations__", {}).items() if k != "media"}
    schema = get_json_schema(visible)
    schema["function"]["name"] = name
    schema["function"]["parameters"].get("properties", {}).pop("media", None)
    return schema


class ToolRegistry:
    """Name -> Tool. The dispatcher looks calls up here; the chat template gets `schemas()`."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(
        self, name: str, modality: ToolModality, function: ToolFunction, concurrent: bool = True
    ) -> Tool:
        tool = Tool(
            name=name,
            modality=modality,
            function=function,
            json_schema=model_visible_schema(function, name),
            concurrent=concurrent,
        )
        self._tools[name] = tool
        return tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self, modalities: set[str] | None = None) -> list[dict[str, Any]]:
        """Schemas of the tools for the given modalities (all when None), for `apply_chat_template(tools=...)`."""
        return [t.json_schema for t in self._tools.values() if modalities is None or t.modality in modalities]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)


def default_registry() -> ToolRegistry:
    """The published module names bound to the offline default backends (imported lazily: they load models)."""
    from reamo.tools.audio import audio_segmentation
    from reamo.tools.image import image_segmentation
    from reamo.tools.video import video_tracking

    registry = ToolRegistry()
    registry.register("ImageSegmentation", "image", image_segmentation)
    registry.register("VideoTracking", "video", video_tracking)
    registry.register("AudioSegmentation", "audio", audio_segmentation)
    return registry
