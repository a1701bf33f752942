"""Records that cross module boundaries: requests, extractions, groundings, tool calls and the final `Result`.

Every output record is a pydantic v2 model that serializes to JSON and back without loss, so results can be
written to jsonlines, diffed, scored and loaded into a knowledge graph by code that never imports a model.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Modality = Literal["text", "image", "video", "audio"]
Task = Literal["ner", "re", "ee"]
ALL_TASKS: tuple[Task, ...] = ("ner", "re", "ee")
# what a request without `tasks` asks: everything. Events joined once the embedded default met both bars on the
# whole M2E2 dev set (trigger F1 45.0 >= 45 and 8.8% of event-free sentences given an event <= 10%; model card)
DEFAULT_TASKS: tuple[Task, ...] = ("ner", "re", "ee")


class Record(BaseModel):
    """Base for every output record: strict fields, JSON round trip through `to_json` / `from_json`."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self, **kwargs: Any) -> str:
        return self.model_dump_json(**kwargs)

    @classmethod
    def from_json(cls, data: str | bytes) -> "Record":
        return cls.model_validate_json(data)


# ---------------------------------------------------------------------------------------------------------------
# Groundings
# ---------------------------------------------------------------------------------------------------------------


class TextSpan(Record):
    """Character offsets into the request text, end exclusive (Python slicing)."""

    start: int = Field(ge=0)
    end: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "TextSpan":
        if self.end < self.start:
            raise ValueError(f"span end {self.end} is before its start {self.start}")
        return self


class Box(Record):
    """Axis-aligned box in pixels, (x1, y1) top-left inclusive, (x2, y2) bottom-right exclusive."""

    x1: float
    y1: float
    x2: float
    y2: float

    @model_validator(mode="after")
    def _ordered(self) -> "Box":
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box corners are not ordered: {self.xyxy}")
        return self

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def iou(self, other: "Box") -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


class Mask(Record):
    """Binary mask as uncompressed COCO-style run-length encoding (column-major, runs start with zeros)."""

    height: int = Field(ge=0)
    width: int = Field(ge=0)
    counts: list[int]

    @model_validator(mode="after")
    def _sums_to_size(self) -> "Mask":
        if any(c < 0 for c in self.counts):
            raise ValueError("mask run lengths must be non-negative")
        if sum(self.counts) != self.height * self.width:
            raise ValueError(
                f"mask runs sum to {sum(self.counts)}, expected height*width = {self.height * self.width}"
            )
        return self

    @classmethod
    def from_array(cls, mask: np.ndarray) -> "Mask":
        array = np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f"a mask must be 2-D (H, W), got shape {array.shape}")
        flat = array.astype(bool).flatten(order="F")
        if flat.size == 0:
            return cls(height=array.shape[0], width=array.shape[1], counts=[])
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(bounds).tolist()
        if flat[0]:
            runs = [0, *runs]
        return cls(height=array.shape[0], width=array.shape[1], counts=[int(r) for r in runs])

    def to_array(self) -> np.ndarray:
        flat = np.zeros(self.height * self.width, dtype=bool)
        position, value = 0, False
        for run in self.counts:
            if value:
                flat[position : position + run] = True
            position += run
            value = not value
        return flat.reshape((self.height, self.width), order="F")

    @property
    def area(self) -> int:
        return int(sum(self.counts[1::2]))

    def bounding_box(self) -> Box | None:
        array = self.to_array()
        ys, xs = np.nonzero(array)
        if ys.size == 0:
            return None
        return Box(x1=float(xs.min()), y1=float(ys.min()), x2=float(xs.max() + 1), y2=float(ys.max() + 1))


class ImageRegion(Record):
    """An entity's place in the image."""

    kind: Literal["image"] = "image"
    box: Box
    mask: Mask | None = None
    score: float | None = None
    source: str = Field(default="", description="tool or backend that produced it, e.g. 'sam2', 'ocr'")


class TrackFrame(Record):
    frame_index: int = Field(ge=0)
    time: float = Field(ge=0, description="seconds from the start of the video")
    box: Box
    mask: Mask | None = None
    score: float | None = None


class Track(Record):
    """An entity followed across video frames."""

    kind: Literal["video"] = "video"
    frames: list[TrackFrame]
    source: str = ""
    score: float | None = Field(default=None, description="confidence of the whole track: how well the target was "
                                "found on its key frame times how well the tracked region kept its appearance")

    @property
    def start(self) -> float | None:
        return self.frames[0].time if self.frames else None

    @property
    def end(self) -> float | None:
        return self.frames[-1].time if self.frames else None


class TimeSpan(Record):
    """An entity's time span in the audio, seconds."""

    kind: Literal["audio"] = "audio"
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    score: float | None = None
    source: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> "TimeSpan":
        if self.end < self.start:
            raise ValueError(f"time span end {self.end} is before its start {self.start}")
        return self

    def iou(self, other: "TimeSpan") -> float:
        inter = max(0.0, min(self.end, other.end) - max(self.start, other.start))
        union = (self.end - self.start) + (other.end - other.start) - inter
        return inter / union if union > 0 else 0.0


class NoRegion(Record):
    """Explicit "no region": a grounding tool looked in this modality and the entity is not there."""

    kind: Literal["none"] = "none"
    modality: Literal["image", "video", "audio"]
    reason: str = ""
    source: str = ""


Grounding = Annotated[Union[ImageRegion, Track, TimeSpan, NoRegion], Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------------------------------
# Extractions
# ---------------------------------------------------------------------------------------------------------------


class Mention(Record):
    """A piece of the input text; `span` is None when the model named text that the input does not contain."""

    text: str = Field(min_length=1)
    span: TextSpan | None = None

    @field_validator("text")
    @classmethod
    def _stripped(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("mention text is empty")
        return value


class Entity(Mention):
    type: str = Field(min_length=1)
    groundings: list[Grounding] = Field(default_factory=list)
    window: int | None = Field(default=None, description="index into Result.windows of a long text it was found in")

    def grounding(self, modality: Literal["image", "video", "audio"]) -> Grounding | None:
        """The first grounding for `modality` (an explicit NoRegion counts), or None if none was attempted."""
        for item in self.groundings:
            if item.kind == modality or (isinstance(item, NoRegion) and item.modality == modality):
                return item
        return None

    @property
    def ungroundable(self) -> bool:
        """True when every grounding attempted said "no region"."""
        return bool(self.groundings) and all(isinstance(g, NoRegion) for g in self.groundings)


class Relation(Record):
    head: Mention
    type: str = Field(min_length=1)
    tail: Mention
    window: int | None = Field(default=None, description="index into Result.windows of a long text it was found in")
    score: float | None = Field(default=None, description="the model's log-likelihood margin of this relation over "
                                "'None' for the pair (rank classification); None when it was generated freely")


class Argument(Record):
    role: str = Field(min_length=1)
    entity: Mention
    score: float | None = Field(default=None, description="margin of this role over 'None' for the mention")


class Event(Record):
    type: str = Field(min_length=1)
    trigger: Mention
    arguments: list[Argument] = Field(default_factory=list)
    window: int | None = Field(default=None, description="index into Result.windows of a long text it was found in")
    score: float | None = Field(default=None, description="margin of this event type over 'None' for the trigger")


# ---------------------------------------------------------------------------------------------------------------
# Tool calls and problems
# ---------------------------------------------------------------------------------------------------------------


class ToolCall(Record):
    """One call the model asked for, in the HF / OpenAI function-call shape (`name` + `arguments`)."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)

    def to_message_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


ToolErrorKind = Literal["unknown_tool", "bad_arguments", "timeout", "crash", "missing_media"]


class ToolError(Record):
    kind: ToolErrorKind
    message: str


class ToolResult(Record):
    """What one call produced: groundings for `target`, or a structured error; never both."""

    call_id: str
    name: str
    target: str | None = None
    groundings: list[Grounding] = Field(default_factory=list)
    error: ToolError | None = None
    seconds: float = 0.0
    matched_entities: list[int] = Field(default_factory=list, description="indices into Result.entities")

    @property
    def ok(self) -> bool:
        return self.error is None


class Problem(Record):
    """Something the parser or the agent could not use, located in the text it came from."""

    message: str
    position: int | None = Field(default=None, description="character offset into the raw model output")
    line: int | None = None
    column: int | None = None
    snippet: str = ""
    stage: Literal["parse", "align", "dispatch", "media", "generate"] = "parse"


# ---------------------------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------------------------


class Result(Record):
    """Everything one extraction produced; what the CLI prints, the UI draws and `eval` scores."""

    text: str = ""
    tasks: list[Task] = Field(default_factory=lambda: list(ALL_TASKS))
    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_results: list[ToolResult] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)
    raw_output: str = ""
    context: str = Field(default="", description="text the tools made from the media and gave to the LLM")
    media: dict[str, str] = Field(default_factory=dict, description="modality -> name of the media given")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    windows: list[TextSpan] = Field(default_factory=list, description="the windows a long text was read in "
                                    "(empty when it fit one prompt); items name theirs by `window`")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


class Labels(Record):
    """The label set given in the prompt; empty lists mean "the model's default ontology"."""

    entity_types: list[str] = Field(default_factory=list)
    relation_types: list[str] = Field(default_factory=list)
    event_types: list[str] = Field(default_factory=list)
    event_roles: dict[str, list[str]] = Field(
        default_factory=dict, description="argument roles per event type; ACE's inventory is used for ACE types "
        "not listed here (reamo.ontology); an event type with no roles gets no arguments")
