"""The Python API: `Agent.from_pretrained("default").extract(text=..., image=..., audio=..., video=...)`.

One extraction runs the whole chain once, left to right: media -> loaders -> encoder features or tool-made
text context -> chat messages -> prompt -> LLM -> protocol parser -> span alignment -> tool dispatcher -> Result.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from reamo.alignment import align, attach_groundings, normalize
from reamo.errors import ConfigError
from reamo.label_filter import keep_requested_labels
from reamo.media import (
    LoadedAudio,
    LoadedImage,
    LoadedVideo,
    MediaBundle,
    MediaLimits,
    load_audio,
    load_image,
    load_video,
)
from reamo.model import ReamoModel
from reamo.model.embedded_default import BASE_NAMES, DEFAULT_NAMES, load_default_model, shipped_settings
from reamo.prompting import MODULE_FOR_MODALITY, build_messages, resolve_labels
from reamo.protocol import format_relation, parse
from reamo.schema import ALL_TASKS, Labels, Problem, Result, Task, ToolCall
from reamo.tools.dispatcher import Dispatcher
from reamo.tools.registry import ToolRegistry, default_registry

logger = logging.getLogger(__name__)

_EVENTS_LINE = re.compile(r"^[ \t]*Events[ \t]*:", re.MULTILINE)


class AgentSettings(BaseModel):
    """Knobs of one Agent; every field has a safe default for CPU use."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=160, ge=1, description="generation stops after this many tokens")
    max_time_s: float = Field(default=120.0, gt=0, description="wall-clock limit for one generation")
    few_shot: bool = True
    auto_ground: bool = Field(
        default=True,
        description="also ground extracted entities the model did not call a tool for, in every given modality",
    )
    keep_unaligned: bool = Field(
        default=False, description="keep extractions whose text the input does not contain (they get no span)"
    )
    tool_timeout_s: float = Field(default=120.0, gt=0)
    pair_none_bias: float | None = Field(
        default=None,
        description="relation classification for given pairs: rank 'None' and each offered relation by the "
        "model's log-likelihood of writing it (rank classification) and answer the best relation when it beats "
        "'None' by more than this margin (negative = lean to relations); None = plain greedy decoding. Calibrated "
        "on held-out train pairs for the shipped default (weights/default/settings.json, `reamo calibrate-pairs`)",
    )
    event_none_bias: float | None = Field(
        default=None,
        description="event detection: when the model writes events, keep them only if its log-likelihood of "
        "starting the Events line with an event beats writing 'None' there by more than this margin (positive = "
        "stricter); None = keep what greedy decoding wrote. Calibrated on held-out M2E2 train sentences for the "
        "shipped default (`reamo calibrate-events`), whose tuning mix over-represents sentences with events",
    )
    media_limits: MediaLimits = Field(default_factory=MediaLimits)


def _media_name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"


class PreparedRequest(BaseModel):
    """One request made ready for generation (what `Agent.prepare` returns)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    media: MediaBundle
    context: str
    features: dict[str, list[Any]]
    timings: dict[str, float]
    started: float
    prompt: str
    pairs: list[tuple[str, str]] = Field(default_factory=list)
    tasks: tuple[Task, ...] = ()
    labels: Labels = Field(default_factory=Labels)
    placeholders: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)


class Agent:
    """Grounded multimodal extraction with a Reamo model and its grounding tools."""

    def __init__(
        self,
        model: ReamoModel,
        registry: ToolRegistry | None = None,
        settings: AgentSettings | None = None,
    ) -> None:
        self.model = model
        self.settings = settings or AgentSettings()
        self.registry = registry if registry is not None else default_registry()
        self.dispatcher = Dispatcher(self.registry, timeout_s=self.settings.tool_timeout_s)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", **settings: Any) -> "Agent":
        """'default' = the embedded default (offline, CPU; tuned adapter when shipped), 'default-base' = its untuned
        base prompted few-shot; otherwise a folder written by `ReamoModel.save_pretrained`."""
        if name_or_path in DEFAULT_NAMES or name_or_path in BASE_NAMES:
            model, tuned = load_default_model(tuned=name_or_path in DEFAULT_NAMES)
            settings.setdefault("few_shot", not tuned)  # a tuned model is prompted as it was trained
            if tuned:
                for key, value in shipped_settings().items():
                    settings.setdefault(key, value)
        else:
            model = ReamoModel.from_pretrained(name_or_path)
            settings.setdefault("few_shot", False)
        return cls(model, settings=AgentSettings(**settings))

    # -- media -----------------------------------------------------------------------------------------------------
    def load_media(self, image: Any = None, audio: Any = None, video: Any = None) -> MediaBundle:
        return load_media_bundle(image, audio, video, self.settings.media_limits)

    def media_inputs(self, media: MediaBundle) -> tuple[list[str], dict[str, list[Any]], str]:
        """Encoded media (placeholders + projected features) and tool-made text context for the rest."""
        placeholders: list[str] = []
        features: dict[str, list[Any]] = {}
        context: list[str] = []
        for modality in ("image", "video", "audio"):
            item = getattr(media, modality)
            if item is None:
                continue
            if modality in self.model.encoded_modalities:
                encoder = self.model.encoder
                preprocess = {
                    "image": encoder.preprocess_image,
                    "video": encoder.preprocess_video,
                    "audio": encoder.preprocess_audio,
                }[modality]
                pixels = preprocess(item)
                batch = pixels.unsqueeze(0)
                features[modality] = [self.model.encode_media(modality, batch)[0]]
                placeholders.append(modality)
            else:
                context.append(_describe(modality, item))
        return placeholders, features, "\n".join(c for c in context if c)

    # -- extraction ------------------------------------------------------------------------------------------------
    def prepare(
        self,
        text: str | None,
        image: Any,
        audio: Any,
        video: Any,
        tasks: tuple[Task, ...],
        labels: Labels | dict[str, list[str]] | list[str] | None,
        pairs: Sequence[tuple[str, str]] | None = None,
    ) -> "PreparedRequest":
        """The front half of an extraction, up to the prompt: media, transcript/context, messages (no generation).

        Shared by `extract_steps` and batch extraction (`reamo.corpus`), which generate many prompts at once.
        """
        text = text or ""
        if not text.strip() and image is None and audio is None and video is None:
            raise ConfigError("nothing to extract from: give text and/or an image, audio or video")
        given_pairs = check_pairs(pairs, tasks)
        timings: dict[str, float] = {}
        started = time.perf_counter()
        media = self.load_media(image=image, audio=audio, video=video)
        timings["load_media"] = time.perf_counter() - started
        mark = time.perf_counter()
        if not text.strip() and media.audio is not None and "audio" not in self.model.encoded_modalities:
            # speech-only input: the transcript is the text that spans point into (the prompt then reads as text
            # narrated by the audio, the "T+A" dialogues of tuning)
            from reamo.tools.audio import default_transcriber

            text = default_transcriber().transcribe(media.audio).text.strip()
            timings["transcribe"] = time.perf_counter() - mark
        placeholders, features, context = self.media_inputs(media)
        timings["media_context"] = time.perf_counter() - mark
        given = [m for m in ("image", "video", "audio") if getattr(media, m) is not None]
        resolved = resolve_labels(labels)
        messages = build_messages(
            text, context, tasks, resolved, placeholders, self.settings.few_shot, given, given_pairs
        )
        return PreparedRequest(
            text=text, media=media, context=context, features=features, timings=timings, started=started,
            prompt=self.model.render_prompt(messages), pairs=given_pairs, tasks=tasks, labels=resolved,
            placeholders=placeholders, modalities=given,
        )

    def pair_prompt(self, request: PreparedRequest, pair: tuple[str, str]) -> str:
        """The request's prompt asking about one entity pair (how given-pair classification was tuned)."""
        messages = build_messages(request.text, request.context, request.tasks, request.labels,
                                  request.placeholders, self.settings.few_shot, request.modalities, [pair])
        return self.model.render_prompt(messages)

    def extract(
        self,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        tasks: tuple[Task, ...] | list[Task] | str = ALL_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | None = None,
        max_new_tokens: int | None = None,
        pairs: Sequence[tuple[str, str]] | None = None,
    ) -> Result:
        """Extract entities / relations / events from the inputs and ground each entity in the given media.

        `pairs`: (head, tail) entity texts whose relation to classify (relation classification, as MNRE is
        scored); needs the "re" task. Without it the model finds the pairs itself.
        """
        for step in self.extract_steps(text, image, audio, video, tasks, labels, max_new_tokens, pairs):
            if isinstance(step, Result):
                return step
        raise AssertionError("extract_steps ends with a Result")  # pragma: no cover

    def extract_batch(
        self,
        texts: Sequence[str],
        tasks: tuple[Task, ...] | list[Task] | str = ALL_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | None = None,
        max_new_tokens: int | None = None,
    ) -> list[Result]:
        """`extract` for many texts (no media) with one batched, left-padded generation: several times the
        throughput of one-by-one calls on CPU, where decoding one sequence leaves the cores mostly idle."""
        tasks = _resolve_tasks(tasks)
        if not texts:
            return []
        requests = [self.prepare(text, None, None, None, tasks, labels) for text in texts]
        mark = time.perf_counter()
        raws = self.model.generate(
            [r.prompt for r in requests], [r.features for r in requests],
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens, max_time=self.settings.max_time_s,
        )
        shared = (time.perf_counter() - mark) / len(requests)
        results = []
        for request, raw in zip(requests, raws, strict=True):
            request.timings["generate"] = shared
            result = self.finish(raw, request.text, tasks, request.media, request.context, request.timings,
                                 request.started, request.labels)
            results.append(self.decide_events(request.prompt, request.features, result))
        return results

    def extract_steps(
        self,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        tasks: tuple[Task, ...] | list[Task] | str = ALL_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | None = None,
        max_new_tokens: int | None = None,
        pairs: Sequence[tuple[str, str]] | None = None,
    ) -> Iterator[str | Result]:
        """`extract` as a generator: a short message before each stage (for progress in UIs), then the Result."""
        tasks = _resolve_tasks(tasks)
        given = [m for m, item in (("image", image), ("video", video), ("audio", audio)) if item is not None]
        if given:
            yield f"reading the {' and '.join(given)}..."
        request = self.prepare(text, image, audio, video, tasks, labels, pairs)
        text, media, context, timings = request.text, request.media, request.context, request.timings
        prompt, features, started = request.prompt, request.features, request.started

        yield "extracting entities, relations and events..."
        mark = time.perf_counter()
        if request.pairs and tasks == ("re",) and self.settings.pair_none_bias is not None:
            raw = self.classify_pairs(request)
        else:
            raw = self.model.generate(
                [prompt],
                [features],
                max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                max_time=self.settings.max_time_s,
            )[0]
        timings["generate"] = time.perf_counter() - mark
        if given:
            yield f"grounding entities in the {' and '.join(given)}..."
        yield self.decide_events(prompt, features, self.finish(raw, text, tasks, media, context, timings, started,
                                                             request.labels))

    def best_pair_relation(self, request: PreparedRequest, pair: tuple[str, str]) -> tuple[str, float]:
        """The offered relation the model finds most likely for `pair` and its log-likelihood margin over "None"
        (what `classify_pairs` thresholds and `reamo calibrate-pairs` calibrates)."""
        head, tail = pair
        end = self.model.tokenizer.eos_token or ""
        types = list(request.labels.relation_types)
        scores = self.model.continuation_logprobs(
            self.pair_prompt(request, pair), request.features,
            [f"Relations: None{end}"] + [f"Relations: {format_relation(head, r, tail)}{end}" for r in types],
        )
        best = max(range(len(types)), key=lambda i: scores[i + 1])
        return types[best], scores[best + 1] - scores[0]

    def event_margin(self, prompt: str, features: dict[str, list[Any]], raw: str) -> float | None:
        """How much more likely the model found starting its Events line with an event ("[") than with "None",
        given the prompt and what it wrote before that line; None when it wrote no events.

        Greedy decoding follows the tuning mix's share of sentences with events; this margin lets
        `event_none_bias` restore the real share (most news sentences have no event).
        """
        header = _EVENTS_LINE.search(raw)
        if header is None or raw[header.end():].lstrip().lower().startswith("none"):
            return None
        with_event, without = self.model.continuation_logprobs(
            prompt + raw[: header.start()], features, ["Events: [", "Events: None"])
        return with_event - without

    def decide_events(self, prompt: str, features: dict[str, list[Any]], result: Result) -> Result:
        """Drops the result's events when their `event_margin` is not above `event_none_bias` (reported as a
        problem, so the raw output and the decision stay visible)."""
        bias = self.settings.event_none_bias
        if bias is None or not result.events:
            return result
        margin = self.event_margin(prompt, features, result.raw_output)
        if margin is None or margin > bias:
            return result
        result.problems.append(Problem(
            stage="generate",
            message=f"dropped {len(result.events)} event(s): the model preferred them over 'None' by {margin:.2f}, "
                    f"not above event_none_bias {bias}",
        ))
        result.events = []
        return result

    def classify_pairs(self, request: PreparedRequest) -> str:
        """Given pairs, one at a time: the model's log-likelihood of answering "None" and of answering each offered
        relation for the pair; the best relation wins when it beats "None" by more than `pair_none_bias`.

        Scoring every label instead of decoding greedily turns the LLM into a calibrated classifier: a small
        tuned model's first token leans to "None" (the most common answer), and greedy decoding turns that lean
        into "never a relation"; here the margin is chosen on held-out train pairs.
        """
        bias = self.settings.pair_none_bias
        assert bias is not None
        chosen: list[str] = []
        for head, tail in request.pairs:
            relation, margin = self.best_pair_relation(request, (head, tail))
            if margin > bias:
                chosen.append(format_relation(head, relation, tail))
        return f"Relations: {''.join(chosen) or 'None'}"

    def finish(
        self,
        raw: str,
        text: str,
        tasks: tuple[Task, ...],
        media: MediaBundle,
        context: str,
        timings: dict[str, float],
        started: float,
        labels: Labels,
    ) -> Result:
        """Parse model output, align spans, keep the requested types, run every tool call, attach groundings: the
        back half of `extract`."""
        parsed = parse(raw)
        entities, relations, events, problems = align(text, parsed, self.settings.keep_unaligned)
        if "ner" not in tasks:
            entities = []
        if "re" not in tasks:
            relations = []
        if "ee" not in tasks:
            events = []
        entities, relations, events, off_label = keep_requested_labels(entities, relations, events, labels)
        problems.extend(off_label)
        given = {m for m in ("image", "video", "audio") if getattr(media, m) is not None}
        calls = [c for c in parsed.tool_calls]
        if self.settings.auto_ground:
            calls.extend(_auto_calls(entities, calls, given))
        mark = time.perf_counter()
        results = self.dispatcher.run(calls, media)
        timings["tools"] = time.perf_counter() - mark
        for result in results:
            if result.error is not None:
                problems.append(Problem(message=f"{result.name}: {result.error.message}", stage="dispatch"))
        problems.extend(attach_groundings(entities, results))
        timings["total"] = time.perf_counter() - started
        return Result(
            text=text,
            tasks=list(tasks),
            entities=entities,
            relations=relations,
            events=events,
            tool_calls=calls,
            tool_results=results,
            problems=parsed.problems + problems,
            raw_output=raw,
            context=context,
            media={m: getattr(media, m).name for m in given},
            timings=timings,
        )

    # -- chat ------------------------------------------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]], max_new_tokens: int | None = None) -> dict[str, Any]:
        """Free-form multi-turn use with HF / OpenAI message dicts; returns the assistant message.

        Tool calls in the reply come back in the standard form
        (`{"role": "assistant", "content": ..., "tool_calls": [{"type": "function", "function": {...}}]}`).
        """
        if not messages or messages[-1].get("role") not in ("user", "tool"):
            raise ConfigError("chat needs a list of messages ending with a user (or tool) message")
        prompt = self.model.render_prompt(messages, tools=self.registry.schemas())
        raw = self.model.generate(
            [prompt],
            max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
            max_time=self.settings.max_time_s,
        )[0]
        parsed = parse(raw)
        content = _strip_tool_calls(raw)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if parsed.tool_calls:
            message["tool_calls"] = [c.to_message_dict() for c in parsed.tool_calls]
        return message


def load_media_bundle(image: Any = None, audio: Any = None, video: Any = None, limits: MediaLimits | None = None) -> MediaBundle:
    """Open each given medium (already-loaded records pass through), so bad media fail before any model work."""
    limits = limits or MediaLimits()
    return MediaBundle(
        image=image if isinstance(image, LoadedImage) or image is None else load_image(image, limits),
        audio=audio if isinstance(audio, LoadedAudio) or audio is None else load_audio(audio, limits),
        video=video if isinstance(video, LoadedVideo) or video is None else load_video(video, limits),
    )


def _describe(modality: str, item: Any) -> str:
    """Text context for a modality the model has no encoder for, from the grounding tools' describers."""
    if modality == "image":
        from reamo.tools.image import describe_image

        return describe_image(item)
    if modality == "audio":
        from reamo.tools.audio import describe_audio

        return describe_audio(item)
    from reamo.tools.video import describe_video

    return describe_video(item)


def check_pairs(pairs: Sequence[tuple[str, str]] | None, tasks: tuple[Task, ...]) -> list[tuple[str, str]]:
    """Given entity pairs as clean (head, tail) string tuples; a clear error for anything else."""
    if not pairs:
        return []
    if "re" not in tasks:
        raise ConfigError(f"entity pairs were given but tasks={list(tasks)} has no 're'; add tasks=('re',)")
    out = []
    for pair in pairs:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(x, str) and x.strip() for x in pair)):
            raise ConfigError(f"bad entity pair {pair!r}: give (head text, tail text), two non-empty strings")
        out.append((pair[0].strip(), pair[1].strip()))
    return out


def _resolve_tasks(tasks: tuple[Task, ...] | list[Task] | str) -> tuple[Task, ...]:
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown task(s) {unknown or tasks}; choose from {', '.join(ALL_TASKS)}")
    return tuple(t for t in ALL_TASKS if t in tasks)  # type: ignore[misc]


def _auto_calls(entities: list, calls: list[ToolCall], modalities: set[str]) -> list[ToolCall]:
    """Calls for entities the model extracted but did not ground, one per entity and given modality."""
    asked = {(c.name, normalize(str(c.arguments.get("target", "")))) for c in calls}
    extra: list[ToolCall] = []
    for modality in ("image", "video", "audio"):
        if modality not in modalities:
            continue
        name = MODULE_FOR_MODALITY[modality]
        for entity in entities:
            key = (name, normalize(entity.text))
            if key in asked:
                continue
            asked.add(key)
            extra.append(
                ToolCall(id=f"auto_{len(extra)}", name=name, arguments={"target": entity.text, "entity_type": entity.type})
            )
    return extra


def _strip_tool_calls(raw: str) -> str:
    import re

    return re.sub(r"<Module>.*?</Instruction>", "", raw, flags=re.DOTALL).strip()
