"""The Python API: `Agent.from_pretrained("default").extract(text=..., image=..., audio=..., video=...)`.

One extraction runs the whole chain once, left to right: media -> loaders -> encoder features or tool-made
text context -> chat messages -> prompt -> LLM -> protocol parser -> span alignment -> decisions -> tool
dispatcher -> Result. The chain itself is `reamo.pipeline`; the Agent holds the model, tools and settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reamo import pipeline
from reamo.candidates import TriggerLexicon
from reamo.decisions import best_relations
from reamo.errors import ConfigError, ExtractionError
from reamo.media import MediaBundle, MediaLimits
from reamo.model import ReamoModel
from reamo.model.decision_heads import DecisionHead
from reamo.model.embedded_default import (
    ARGUMENT_HEAD_NAME,
    DEFAULT_NAMES,
    EMBEDDED_NAMES,
    LEXICON_NAME,
    RELATION_HEAD_NAME,
    SETTINGS_NAME,
    SHIPPED_HEADS,
    SHIPPED_LEXICON,
    TRIGGER_HEAD_NAME,
    TRIPLE_HEAD_NAME,
    load_default_model,
    read_settings,
    shipped_settings,
)
from reamo.pipeline import PreparedRequest, load_media_bundle, validate_request
from reamo.protocol import parse
from reamo.schema import DEFAULT_TASKS, Labels, Result
from reamo.tools.dispatcher import Dispatcher
from reamo.tools.registry import ToolRegistry, default_registry

logger = logging.getLogger(__name__)

__all__ = ["Agent", "AgentSettings", "PreparedRequest", "load_media_bundle"]


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
    pair_head_none_bias: float | None = Field(
        default=None,
        description="with pair_none_bias and a relation head (`reamo fit-relation-head`) that knows every offered "
        "relation: given pairs are decided by the head, whose margin of the best relation over 'None' must beat this "
        "instead (its own scale, calibrated by `reamo calibrate-pairs` when the model has a head); None = the head "
        "is not used for given pairs",
    )
    triple_none_bias: float | None = Field(
        default=None,
        description="relations without given pairs: every pair of extracted entities is classified as a given pair "
        "(both directions) and the best relation kept when it beats 'None' by more than this margin; None = the "
        "relations the model writes freely. Calibrated on held-out MNRE train sentences (`reamo calibrate-triples`)",
    )
    triple_head_none_bias: float | None = Field(
        default=None,
        description="with triple_none_bias and a triple head (`reamo fit-triple-head`; else the relation head) that "
        "knows every requested relation: the pairs of extracted entities are decided by the head with this margin "
        "instead (calibrated by `reamo calibrate-triples` when the model has a head); None = the head is not used "
        "for full triples",
    )
    trigger_none_bias: float | None = Field(
        default=None,
        description="events by candidate scoring: each trigger candidate (reamo.candidates) becomes an event of the "
        "best requested type when that beats 'None' by more than this margin; None = the events the model writes "
        "freely (then `event_none_bias` applies). Calibrated on held-out M2E2 train sentences (`reamo "
        "calibrate-events`)",
    )
    trigger_head_none_bias: float | None = Field(
        default=None,
        description="with trigger_none_bias and a trigger head (`reamo fit-trigger-head`) that knows every requested "
        "event type: the head's margin of the best type over 'None' must beat this instead (its own scale, "
        "calibrated by `reamo calibrate-events` when the model has a head); None = the head is not used",
    )
    argument_none_bias: float | None = Field(
        default=None,
        description="with trigger_none_bias: an extracted entity becomes an argument of an event in the best role "
        "its type allows when that beats 'no role' by more than this margin; None = events without arguments",
    )
    argument_head_none_bias: float | None = Field(
        default=None,
        description="with argument_none_bias and an argument head (`reamo fit-argument-head`) that knows every role "
        "the event type allows: the head's margin of the best role over 'no role' must beat this instead (its own "
        "scale, calibrated by `reamo calibrate-events` when the model has a head); None = the head is not used",
    )
    relation_type_filter: bool = Field(
        default=True, description="full relation extraction asks a pair only about relations whose entity types "
        "(MNRE labels carry them, e.g. /per/org/member_of) fit the pair's extracted types")
    max_pairs: int = Field(default=30, ge=1, description="entity pairs per window asked about, nearest first")
    media_limits: MediaLimits = Field(default_factory=MediaLimits)
    batch_size: int = Field(default=32, ge=1, description="windows generated together in one batch")
    draft_tokens: int = Field(default=4, ge=0, le=64, description="prompt-lookup speculative decoding: once few "
                              "windows are left writing (a single request, a batch's tail), each forward pass also "
                              "checks up to this many tokens copied from the prompt (reamo.model.prompt_lookup): the "
                              "same greedy answer in fewer passes; 0 = one token per pass")
    precision: Literal["float32", "bfloat16", "auto"] = Field(
        default="float32",
        description="inference precision `from_pretrained` sets (ReamoModel.prepare_for_inference): float32 = the "
        "answers the model card reports; bfloat16 = 2-3x faster on CPUs with native bfloat16 (AVX-512 BF16, AMX) "
        "with answers that differ in close calls; auto = bfloat16 where it is native",
    )
    window_tokens: int = Field(default=128, ge=16, description="a text of at most this many tokens is read "
                               "whole; a longer one in windows of whole sentences (reamo.segmenting)")
    sentence_window_tokens: int = Field(default=48, ge=8, description="in a longer text, consecutive sentences "
                                        "share a window only up to this many tokens: the embedded default finds "
                                        "as many entities per sentence one sentence at a time as alone (0.99x on "
                                        "a 3,000-word M2E2 text) but 0.69x in windows of 128 tokens")


class Agent:
    """Grounded multimodal extraction with a Reamo model and its grounding tools.

    Every way in (`extract`, `extract_batch`, `extract_steps`, `run`) goes through the one pipeline of
    `reamo.pipeline`: `validate_request` -> `prepare` -> `run_steps` (model step, decisions, grounding).
    """

    def __init__(
        self,
        model: ReamoModel,
        registry: ToolRegistry | None = None,
        settings: AgentSettings | None = None,
        trigger_lexicon: TriggerLexicon | None = None,
        trigger_head: DecisionHead | None = None,
        relation_head: DecisionHead | None = None,
        argument_head: DecisionHead | None = None,
        triple_head: DecisionHead | None = None,
    ) -> None:
        self.model = model
        self.settings = settings or AgentSettings()
        self.trigger_lexicon = trigger_lexicon  # words that triggered events in the model's tuning data
        self.trigger_head = trigger_head  # event type of a trigger candidate from the LLM's state (`fit-trigger-head`)
        self.relation_head = relation_head  # relation of an entity pair from the LLM's state (`fit-relation-head`)
        self.argument_head = argument_head  # role of an event's argument candidate (`fit-argument-head`)
        self.triple_head = triple_head  # relation of an ordered pair of extracted entities (`fit-triple-head`)
        self.registry = registry if registry is not None else default_registry()
        self.dispatcher = Dispatcher(self.registry, timeout_s=self.settings.tool_timeout_s)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", **settings: Any) -> "Agent":
        """'default' = the embedded default (offline, CPU; tuned adapter when shipped), 'default-base' = its untuned
        base prompted few-shot, 'gemma3-270m' = the Gemma-3-270M base prompted few-shot (`reamo[gemma]`); otherwise
        a folder written by `ReamoModel.save_pretrained`, with the settings.json, trigger lexicon and decision heads
        found in it."""
        lexicon_file = heads = None
        if name_or_path in EMBEDDED_NAMES:
            model, tuned = load_default_model(tuned=name_or_path in DEFAULT_NAMES, name=name_or_path)
            settings.setdefault("few_shot", not tuned)  # a tuned model is prompted as it was trained
            if tuned:
                for key, value in shipped_settings().items():
                    settings.setdefault(key, value)
                lexicon_file, heads = SHIPPED_LEXICON, SHIPPED_HEADS
        else:
            model = ReamoModel.from_pretrained(name_or_path)
            settings.setdefault("few_shot", False)
            folder = Path(name_or_path).expanduser()
            lexicon_file, heads = folder / LEXICON_NAME, folder
            if (folder / SETTINGS_NAME).is_file():  # `reamo calibrate-* --model F --out F/settings.json`
                for key, value in read_settings(folder / SETTINGS_NAME).items():
                    settings.setdefault(key, value)
        checked = AgentSettings(**settings)
        model.prepare_for_inference(checked.precision)
        lexicon = TriggerLexicon.load(lexicon_file) if lexicon_file is not None and lexicon_file.is_file() else None
        found = {}
        text_config = model.llm.config.get_text_config()
        for name in (TRIGGER_HEAD_NAME, RELATION_HEAD_NAME, ARGUMENT_HEAD_NAME, TRIPLE_HEAD_NAME):
            found[name] = DecisionHead.load(heads, name) if heads is not None else None
            if found[name] is not None:
                found[name].check_fits(text_config.hidden_size, text_config.num_hidden_layers, str(heads), name)
        return cls(model, settings=checked, trigger_lexicon=lexicon, trigger_head=found[TRIGGER_HEAD_NAME],
                   relation_head=found[RELATION_HEAD_NAME], argument_head=found[ARGUMENT_HEAD_NAME],
                   triple_head=found[TRIPLE_HEAD_NAME])

    # -- the pipeline ----------------------------------------------------------------------------------------------
    def load_media(self, image: Any = None, audio: Any = None, video: Any = None) -> MediaBundle:
        return load_media_bundle(image, audio, video, self.settings.media_limits)

    def prepare(
        self,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        tasks: Sequence[str] | str = DEFAULT_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | str | None = None,
        pairs: Sequence[tuple[str, str]] | None = None,
        max_new_tokens: int | None = None,
    ) -> PreparedRequest:
        """The front half of an extraction (validation, media, context, windows, prompts); no generation."""
        return pipeline.prepare(self, validate_request(text, image, audio, video, tasks, labels, pairs,
                                                       max_new_tokens))

    def run(self, requests: Sequence[PreparedRequest], raise_errors: bool = True) -> list[Result | ExtractionError]:
        """Model step and back half for prepared requests, batched (see `reamo.pipeline.run_steps`)."""
        outcome: list[Result | ExtractionError] = []
        for step in pipeline.run_steps(self, list(requests), raise_errors=raise_errors):
            if isinstance(step, list):
                outcome = step
        return outcome

    def extract(
        self,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        tasks: Sequence[str] | str = DEFAULT_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | str | None = None,
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
        tasks: Sequence[str] | str = DEFAULT_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | str | None = None,
        max_new_tokens: int | None = None,
        pairs: Sequence[Sequence[tuple[str, str]] | None] | None = None,
    ) -> list[Result]:
        """`extract` for many texts (no media) at once: batched generation (several times the throughput of
        one-by-one calls on CPU, where decoding one sequence leaves the cores mostly idle) and batched scoring.
        `pairs[i]`: given entity pairs of text i (relation classification)."""
        if not texts:
            return []
        pairs = pairs or [None] * len(texts)
        requests = [self.prepare(text, None, None, None, tasks, labels, given, max_new_tokens)
                    for text, given in zip(texts, pairs, strict=True)]
        return self.run(requests)  # type: ignore[return-value]

    def extract_steps(
        self,
        text: str | None = None,
        image: Any = None,
        audio: Any = None,
        video: Any = None,
        tasks: Sequence[str] | str = DEFAULT_TASKS,
        labels: Labels | dict[str, list[str]] | list[str] | str | None = None,
        max_new_tokens: int | None = None,
        pairs: Sequence[tuple[str, str]] | None = None,
    ) -> Iterator[str | Result]:
        """`extract` as a generator: a short message before each stage (for progress in UIs), then the Result."""
        checked = validate_request(text, image, audio, video, tasks, labels, pairs, max_new_tokens)
        given = [m for m, item in (("image", image), ("video", video), ("audio", audio)) if item is not None]
        if given:
            yield f"reading the {' and '.join(given)}..."
        request = pipeline.prepare(self, checked)
        for step in pipeline.run_steps(self, [request]):
            if isinstance(step, list):
                result = step[0]
                assert isinstance(result, Result)
                yield result
            else:
                yield step

    def finish(self, request: PreparedRequest, raws: list[str]) -> Result:
        """The back half for one prepared request whose model output (one text per window) is at hand: parse,
        align, keep the requested labels, decide relations and events, ground. `run` does this for a batch."""
        for step in pipeline.finish_steps(self, [request], {0: raws}, [None]):
            if isinstance(step, list):
                result = step[0]
                assert isinstance(result, Result)
                return result
        raise AssertionError("finish_steps ends with the results")  # pragma: no cover

    # -- decisions (also used by calibration) -----------------------------------------------------------------------
    def best_pair_relation(self, request: PreparedRequest, pair: tuple[str, str]) -> tuple[str, float]:
        """The offered relation the model finds most likely for `pair` and its margin over "None" (on the relation
        head's scale where the head decides given pairs, else the log-likelihood margin)."""
        relation, margin, _ = best_relations(self, [request.model_copy(update={"pairs": [pair]})])[0][0]
        return relation, margin

    # -- chat ------------------------------------------------------------------------------------------------------
    def chat(self, messages: list[dict[str, Any]], max_new_tokens: int | None = None) -> dict[str, Any]:
        """Free-form multi-turn use with HF / OpenAI message dicts; returns the assistant message.

        Tool calls in the reply come back in the standard form
        (`{"role": "assistant", "content": ..., "tool_calls": [{"type": "function", "function": {...}}]}`).
        """
        if not messages or messages[-1].get("role") not in ("user", "tool"):
            raise ConfigError("chat needs a list of messages ending with a user (or tool) message")
        if max_new_tokens is not None:
            validate_request("chat", max_new_tokens=max_new_tokens)  # the same check as extraction's
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


def _strip_tool_calls(raw: str) -> str:
    import re

    return re.sub(r"<Module>.*?</Instruction>", "", raw, flags=re.DOTALL).strip()
