"""The one extraction pipeline that every caller runs (`Agent.extract`, `extract_batch`, the UI's streamed steps,
corpus extraction, calibration, eval): validate -> prepare -> model step -> finish.

* `validate_request`: the caller's arguments as one checked `ExtractionInput`; cheap, so the CLI runs it before it
  loads a model.
* `prepare` (front half, per request, no LLM): media, transcript, tool-made context, windows of a long text
  (`reamo.segmenting`), one prompt per window with its shared start (the system turn) marked for the prefix cache.
* `run_steps` (model step + back half, for many requests at once): every window of every request is generated in
  length-sorted batches (or, for relation classification of given pairs, scored); then per request: parse, align to
  its window and map the spans back to the whole text, merge what overlapping windows found twice, keep the
  requested labels, decide the uncertain items (`reamo.decisions`, one batched scoring pass), ground the entities
  with the tools once, and put everything with its timings into a `Result`.

A failure that belongs to one request (a tool that crashes while describing its image, a window that cannot be
generated) becomes that request's `Problem` or `ExtractionError`; the batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from reamo.alignment import align, attach_groundings, drop_shared_regions, normalize
from reamo.errors import ConfigError, ExtractionError, ReamoError
from reamo.label_filter import keep_requested_labels
from reamo.media import LoadedAudio, LoadedImage, LoadedVideo, MediaBundle, MediaLimits, load_audio, load_image, load_video
from reamo.prompting import MODULE_FOR_MODALITY, build_messages, resolve_labels
from reamo.protocol import parse
from reamo.schema import ALL_TASKS, DEFAULT_TASKS, Entity, Event, Labels, Mention, Problem, Relation, Result, Task, TextSpan, ToolCall
from reamo.segmenting import Window, split_windows

if TYPE_CHECKING:  # the pipeline is given the agent's parts (model, settings, dispatcher); it never builds one
    from reamo.agent import Agent

logger = logging.getLogger(__name__)


class ExtractionInput(BaseModel):
    """One request's arguments, checked (`validate_request`): nothing here can fail later for a reason the caller
    could have been told up front."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    text: str = ""
    image: Any = None
    audio: Any = None
    video: Any = None
    tasks: tuple[Task, ...] = DEFAULT_TASKS
    labels: Labels = Field(default_factory=Labels)
    pairs: list[tuple[str, str]] = Field(default_factory=list)
    max_new_tokens: int | None = None


class Segment(BaseModel):
    """One window of the request text and the prompt that asks about it; `prefix` is the start of `prompt` shared
    with other requests (system turn and few-shot turns), whose key/values the model caches."""

    model_config = ConfigDict(extra="forbid")

    window: Window
    prompt: str
    prefix: str = ""
    transcript: bool = Field(default=False, description="the window is the speech transcript of a request that "
                             "has its own text: it only adds entities the text lacks")


class PreparedRequest(BaseModel):
    """One request made ready for the model (what `prepare` returns)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    media: MediaBundle
    context: str
    features: dict[str, list[Any]]
    timings: dict[str, float]
    started: float
    segments: list[Segment]
    pairs: list[tuple[str, str]] = Field(default_factory=list)
    tasks: tuple[Task, ...] = ()
    labels: Labels = Field(default_factory=Labels)
    placeholders: list[str] = Field(default_factory=list)
    modalities: list[str] = Field(default_factory=list)
    max_new_tokens: int = 160
    problems: list[Problem] = Field(default_factory=list)

    @property
    def prompt(self) -> str:
        """The prompt of the first window (the whole prompt of a request that fits one window)."""
        return self.segments[0].prompt

    @property
    def text_segments(self) -> list[Segment]:
        """The windows of the request text (without a speech transcript's segment), in text order."""
        return [s for s in self.segments if not s.transcript]


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def resolve_tasks(tasks: Sequence[str] | str) -> tuple[Task, ...]:
    """"ner,re" / ["ner", "re"] -> tasks in canonical order; a ConfigError naming unknown ones."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise ConfigError(f"tasks must be a list of task names or a comma-separated string, got {tasks!r}; "
                          f"choose from {', '.join(ALL_TASKS)}")
    chosen = [t.strip().lower() for t in tasks]
    unknown = [t for t in chosen if t not in ALL_TASKS]
    if unknown or not chosen:
        raise ConfigError(f"unknown task(s) {unknown or list(tasks)}; choose from {', '.join(ALL_TASKS)}")
    return tuple(t for t in ALL_TASKS if t in chosen)  # type: ignore[misc]


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


def check_text(text: Any) -> str:
    """The request text as a clean str: None is "", bytes must be UTF-8, a str must be encodable (no lone
    surrogates, which is what undecodable command-line bytes become)."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"text is not valid UTF-8 (byte {error.start}: {text[error.start:error.start + 4]!r});"
                              " give a str, or bytes in UTF-8") from error
    if not isinstance(text, str):
        raise ConfigError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigError(f"text holds bytes that are not UTF-8 (at character {error.start}); re-encode the input "
                          "as UTF-8") from error
    return text


def validate_request(
    text: Any = None,
    image: Any = None,
    audio: Any = None,
    video: Any = None,
    tasks: Sequence[str] | str = DEFAULT_TASKS,
    labels: Labels | dict[str, list[str]] | list[str] | str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    max_new_tokens: int | None = None,
) -> ExtractionInput:
    """Check a request before any model or media work; raises ConfigError naming the problem and the fix."""
    text = check_text(text)
    if not text.strip() and image is None and audio is None and video is None:
        raise ConfigError("nothing to extract from: give text (not only whitespace) and/or an image, audio or video")
    resolved_tasks = resolve_tasks(tasks)
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):
        raise ConfigError(f"max_new_tokens must be a positive integer (or None for the agent's setting), "
                          f"got {max_new_tokens!r}")
    return ExtractionInput(text=text, image=image, audio=audio, video=video, tasks=resolved_tasks,
                           labels=resolve_labels(labels), pairs=check_pairs(pairs, resolved_tasks),
                           max_new_tokens=max_new_tokens)


# ---------------------------------------------------------------------------------------------------------------
# Front half
# ---------------------------------------------------------------------------------------------------------------


def load_media_bundle(image: Any = None, audio: Any = None, video: Any = None,
                      limits: MediaLimits | None = None) -> MediaBundle:
    """Open each given medium (already-loaded records pass through), so bad media fail before any model work."""
    limits = limits or MediaLimits()
    return MediaBundle(
        image=image if isinstance(image, LoadedImage) or image is None else load_image(image, limits),
        audio=audio if isinstance(audio, LoadedAudio) or audio is None else load_audio(audio, limits),
        video=video if isinstance(video, LoadedVideo) or video is None else load_video(video, limits),
    )


def describe(modality: str, item: Any) -> str:
    """Text context for a modality the model has no encoder for, from the grounding tools' describers."""
    if modality == "image":
        from reamo.tools.image import describe_image

        return describe_image(item)
    if modality == "audio":
        from reamo.tools.audio import describe_audio

        return describe_audio(item)
    from reamo.tools.video import describe_video

    return describe_video(item)


def media_inputs(agent: "Agent", media: MediaBundle, problems: list[Problem],
                 no_context: frozenset[str] = frozenset()) -> tuple[list[str], dict[str, list[Any]], dict[str, str]]:
    """Encoded media (placeholders + projected features) and tool-made text context for the rest, per modality
    (except those in `no_context`, which the caller reads another way); a describer that fails costs its context
    line (named in `problems`), not the request."""
    placeholders: list[str] = []
    features: dict[str, list[Any]] = {}
    context: dict[str, str] = {}
    model = agent.model
    for modality in ("image", "video", "audio"):
        item = getattr(media, modality)
        if item is None:
            continue
        if modality in model.encoded_modalities:
            encoder = model.encoder
            preprocess = {"image": encoder.preprocess_image, "video": encoder.preprocess_video,
                          "audio": encoder.preprocess_audio}[modality]
            features[modality] = [model.encode_media(modality, preprocess(item).unsqueeze(0))[0]]
            placeholders.append(modality)
            continue
        if modality in no_context:
            continue
        try:
            context[modality] = describe(modality, item)
        except Exception as error:  # noqa: BLE001 - one tool's failure on this input becomes its problem
            logger.warning("describing the %s failed: %s: %s", modality, type(error).__name__, error)
            problems.append(Problem(stage="media", message=f"could not describe the {modality} for the model "
                                    f"({type(error).__name__}: {error}); extracting without its context"))
    return placeholders, features, context


def prepare(agent: "Agent", request: ExtractionInput) -> PreparedRequest:
    """The front half of an extraction, up to the prompts: media, transcript/context, windows, messages."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    media = load_media_bundle(request.image, request.audio, request.video, agent.settings.media_limits)
    timings["load_media"] = time.perf_counter() - started
    text = request.text
    mark = time.perf_counter()
    model = agent.model
    if not text.strip() and media.audio is not None and "audio" not in model.encoded_modalities:
        # speech-only input: the transcript is the text that spans point into (the prompt then reads as text
        # narrated by the audio, the "T+A" dialogues of tuning)
        from reamo.tools.audio import default_transcriber

        text = default_transcriber().transcribe(media.audio).text.strip()
        timings["transcribe"] = time.perf_counter() - mark
    problems: list[Problem] = []
    # text and audio without an audio encoder: the text is what the user wrote, so entities come from it, never
    # from a misheard copy of a name in the transcript (which then aligns nowhere); the transcript is read as its
    # own segment, which grounds them and adds only what the text lacks, not as a context line
    transcript_segment = bool(request.text.strip()) and media.audio is not None \
        and "audio" not in model.encoded_modalities
    placeholders, features, contexts = media_inputs(
        agent, media, problems, no_context=frozenset({"audio"}) if transcript_segment else frozenset())
    transcript = ""
    if transcript_segment:
        from reamo.tools.audio import default_transcriber

        try:
            transcript = default_transcriber().transcribe(media.audio).text.strip()
        except Exception as error:  # noqa: BLE001 - as a describer's failure: the text is still extracted
            logger.warning("transcribing the audio failed: %s: %s", type(error).__name__, error)
            problems.append(Problem(stage="media", message=f"could not transcribe the audio ({type(error).__name__}: "
                                    f"{error}); extracting from the text alone"))
    context = "\n".join(c for c in contexts.values() if c)
    timings["media_context"] = time.perf_counter() - mark
    given = [m for m in ("image", "video", "audio") if getattr(media, m) is not None]
    settings = agent.settings
    if request.pairs:  # relation classification names its pairs in the whole text
        windows = [Window(start=0, text=text)]
    else:
        windows = split_windows(text, lambda t: len(model.tokenizer(t, add_special_tokens=False)["input_ids"]),
                                settings.window_tokens, pack_tokens=settings.sentence_window_tokens)
    asked = generation_tasks(agent, request.tasks, bool(request.pairs))
    segments = []
    for window in windows:
        messages = build_messages(window.text, context, asked, request.labels, placeholders,
                                  settings.few_shot, given, request.pairs)
        segments.append(Segment(window=window, prompt=model.render_prompt(messages),
                                prefix=model.render_prompt(messages[:-1], add_generation_prompt=False)))
    if transcript and not request.pairs:
        messages = build_messages(transcript, context, ("ner",), request.labels, placeholders, settings.few_shot,
                                  given)
        segments.append(Segment(window=Window(start=0, text=transcript), prompt=model.render_prompt(messages),
                                prefix=model.render_prompt(messages[:-1], add_generation_prompt=False),
                                transcript=True))
    if len(windows) > 1:
        logger.info("text of %d characters read as %d windows of whole sentences", len(text), len(windows))
    return PreparedRequest(
        text=text, media=media, context=context, features=features, timings=timings, started=started,
        segments=segments, pairs=request.pairs, tasks=request.tasks, labels=request.labels,
        placeholders=placeholders, modalities=given, problems=problems,
        max_new_tokens=request.max_new_tokens or settings.max_new_tokens,
    )


def generation_tasks(agent: "Agent", tasks: tuple[Task, ...], given_pairs: bool) -> tuple[Task, ...]:
    """What the model is asked to write: the requested tasks, except relations and events that candidate scoring
    decides (`reamo.decisions`), which need the entities instead (their pairs and arguments come from them)."""
    settings = agent.settings
    scored = {t for t, on in (("re", settings.triple_none_bias is not None and not given_pairs),
                              ("ee", settings.trigger_none_bias is not None)) if on and t in tasks}
    if not scored:
        return tasks
    return tuple(t for t in ALL_TASKS if (t in tasks and t not in scored) or t == "ner")  # type: ignore[misc]


def pair_prompt(agent: "Agent", request: PreparedRequest, pair: tuple[str, str]) -> Segment:
    """The request's prompt asking about one entity pair (how given-pair classification was tuned)."""
    messages = build_messages(request.text, request.context, request.tasks, request.labels, request.placeholders,
                              agent.settings.few_shot, request.modalities, [pair])
    return Segment(window=Window(start=0, text=request.text), prompt=agent.model.render_prompt(messages),
                   prefix=agent.model.render_prompt(messages[:-1], add_generation_prompt=False))


# ---------------------------------------------------------------------------------------------------------------
# Model step
# ---------------------------------------------------------------------------------------------------------------


def _classifies_pairs(agent: "Agent", request: PreparedRequest) -> bool:
    return bool(request.pairs) and request.tasks == ("re",) and agent.settings.pair_none_bias is not None


def generate_segments(agent: "Agent", jobs: list[tuple[PreparedRequest, Segment]]) -> list[str | ReamoError]:
    """Greedy generation for every (request, window), in batches of `AgentSettings.batch_size` sorted by prompt
    length (less padding); a batch that fails is retried one window at a time, so only the bad window fails."""
    out: list[str | ReamoError] = [""] * len(jobs)
    settings = agent.settings
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i][0].max_new_tokens, len(jobs[i][1].prompt)))
    batches: list[list[int]] = []
    for index in order:
        if batches and len(batches[-1]) < settings.batch_size \
                and jobs[batches[-1][0]][0].max_new_tokens == jobs[index][0].max_new_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])

    def run(rows: list[int]) -> list[str]:
        done = agent.model.generations(
            [jobs[i][1].prompt for i in rows], [jobs[i][0].features for i in rows],
            max_new_tokens=jobs[rows[0]][0].max_new_tokens, max_time=settings.max_time_s,
            prefixes=[jobs[i][1].prefix for i in rows], draft_tokens=settings.draft_tokens,
        )
        for row, generation in zip(rows, done):
            if generation.stop in ("max_new_tokens", "max_time"):
                limit = (f"max_new_tokens={jobs[row][0].max_new_tokens}" if generation.stop == "max_new_tokens"
                         else f"max_time_s={settings.max_time_s}")
                jobs[row][0].problems.append(Problem(stage="generate", message=(
                    f"the model's answer{' for window ' + str(row) if len(jobs[row][0].segments) > 1 else ''} was "
                    f"cut at {limit}: it may miss items; raise the limit to read it all")))
        return [g.text for g in done]

    for rows in batches:
        try:
            texts = run(rows)
        except Exception as error:  # noqa: BLE001 - retried row by row below, so one bad window fails alone
            if len(rows) == 1:
                out[rows[0]] = ExtractionError(f"generation failed: {type(error).__name__}: {error}")
                continue
            logger.warning("a batch of %d failed (%s: %s); generating its windows one by one", len(rows),
                           type(error).__name__, error)
            texts = []
            for row in rows:
                try:
                    texts.extend(run([row]))
                except Exception as inner:  # noqa: BLE001
                    out[row] = ExtractionError(f"generation failed: {type(inner).__name__}: {inner}")
                    texts.append("")
        for row, text in zip(rows, texts):
            if not isinstance(out[row], ReamoError):
                out[row] = text
    return out


# ---------------------------------------------------------------------------------------------------------------
# Back half
# ---------------------------------------------------------------------------------------------------------------


def _shift(mention: Mention, offset: int) -> None:
    if mention.span is not None and offset:
        mention.span = TextSpan(start=mention.span.start + offset, end=mention.span.end + offset)


def _span_key(mention: Mention) -> tuple[Any, ...]:
    return (mention.span.start, mention.span.end) if mention.span else ("text", normalize(mention.text))


def read_outputs(agent: "Agent", request: PreparedRequest, raws: list[str]) -> Result:
    """Parse each window's output, align it to its window, move spans to document offsets and merge what
    overlapping windows found twice; keeps the requested tasks and labels (no tools yet)."""
    entities: list[Entity] = []
    relations: list[Relation] = []
    events: list[Event] = []
    problems: list[Problem] = list(request.problems)
    calls: list[ToolCall] = []
    seen: set[tuple[Any, ...]] = set()
    several = sum(1 for s in request.segments if not s.transcript) > 1
    heard: list[Entity] = []
    for index, (segment, raw) in enumerate(zip(request.segments, raws, strict=True)):
        if segment.transcript:
            heard = [e for e in align(segment.window.text, parse(raw), False)[0]]
            continue
        parsed = parse(raw)
        found, rels, evs, aligned = align(segment.window.text, parsed, agent.settings.keep_unaligned)
        offset = segment.window.start
        for item in found:
            _shift(item, offset)
        for relation in rels:
            _shift(relation.head, offset)
            _shift(relation.tail, offset)
        for event in evs:
            _shift(event.trigger, offset)
            for argument in event.arguments:
                _shift(argument.entity, offset)
        window = index if several else None
        for entity in found:
            key = ("entity", entity.type, *_span_key(entity))
            if key not in seen:
                seen.add(key)
                entities.append(entity.model_copy(update={"window": window}))
        for relation in rels:
            key = ("relation", relation.type, *_span_key(relation.head), *_span_key(relation.tail))
            if key not in seen:
                seen.add(key)
                relations.append(relation.model_copy(update={"window": window}))
        for event in evs:
            key = ("event", event.type, *_span_key(event.trigger))
            if key not in seen:
                seen.add(key)
                events.append(event.model_copy(update={"window": window}))
        for problem in parsed.problems + aligned:
            if several:
                problem = problem.model_copy(update={"message": f"window {index}: {problem.message}"})
            problems.append(problem)
        for call in parsed.tool_calls:
            calls.append(call.model_copy(update={"id": f"w{index}_{call.id}"}) if several else call)
    known = {normalize(e.text) for e in entities}
    for entity in heard:  # said in the audio, not written in the text: no text span, grounded in the audio
        name = normalize(entity.text)
        if not any(similar_names(name, k) for k in known):  # "Tim Cock" is the text's "Tim Cook", misheard
            known.add(name)
            entities.append(entity.model_copy(update={"span": None}))
            problems.append(Problem(stage="align", message=f"entity {entity.text!r} was heard in the audio, not "
                                    "written in the text: it has no text span"))
    if "re" not in request.tasks:
        relations = []
    if "ee" not in request.tasks:
        events = []
    entities, relations, events, off_label = keep_requested_labels(entities, relations, events, request.labels)
    # entities are kept for the decisions (pairs, arguments) even when not asked for; `run_steps` drops them later
    problems.extend(p for p in off_label if "ner" in request.tasks or not p.message.startswith("dropped entity"))
    return Result(
        text=request.text, tasks=list(request.tasks), entities=entities, relations=relations, events=events,
        tool_calls=calls, problems=problems, raw_output=raws[0] if len(raws) == 1 else "\n".join(
            f"[{'transcript' if segment.transcript else f'window {i}'}] {raw}"
            for i, (segment, raw) in enumerate(zip(request.segments, raws))),
        context=request.context, media={m: getattr(request.media, m).name for m in request.modalities},
        timings=request.timings,
        windows=[TextSpan(start=s.window.start, end=s.window.end) for s in request.segments
                 if not s.transcript] if several else [],
    )


def similar_names(a: str, b: str, threshold: float = 0.8) -> bool:
    """Normalized names that are one another's part or nearly the same string (speech recognition slips)."""
    from difflib import SequenceMatcher

    return a in b or b in a or SequenceMatcher(None, a, b).ratio() >= threshold


def auto_calls(entities: list[Entity], calls: list[ToolCall], modalities: set[str]) -> list[ToolCall]:
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
            extra.append(ToolCall(id=f"auto_{len(extra)}", name=name,
                                  arguments={"target": entity.text, "entity_type": entity.type}))
    return extra


def complete_calls(agent: "Agent", calls: list[ToolCall], entities: list[Entity]) -> list[ToolCall]:
    """The model's calls with what it left out filled from the entity it names: a call `<Instruction>Eileen
    Collins</Instruction>` has no `entity_type`, and without it the image tool does not look for a face."""
    types = {normalize(e.text): e.type for e in entities}
    out = []
    for call in calls:
        target = call.arguments.get("target") if isinstance(call.arguments, dict) else None
        tool = agent.registry.get(call.name)
        takes_type = tool is not None and "entity_type" in tool.json_schema["function"]["parameters"].get(
            "properties", {})
        if isinstance(target, str) and takes_type and not call.arguments.get("entity_type") \
                and normalize(target) in types:
            call = call.model_copy(update={"arguments": {**call.arguments, "entity_type": types[normalize(target)]}})
        out.append(call)
    return out


def ground(agent: "Agent", request: PreparedRequest, result: Result) -> None:
    """Run the model's tool calls (missing arguments filled from their entity) and, with `auto_ground`, one for
    every entity and given modality no call covered; attach the results."""
    given = {m for m in ("image", "video", "audio") if getattr(request.media, m) is not None}
    calls = complete_calls(agent, list(result.tool_calls), result.entities)
    if agent.settings.auto_ground:
        calls.extend(auto_calls(result.entities, calls, given))
    mark = time.perf_counter()
    results = agent.dispatcher.run(calls, request.media) if calls else []
    result.timings["tools"] = time.perf_counter() - mark
    for tool_result in results:
        if tool_result.error is not None:
            result.problems.append(Problem(message=f"{tool_result.name}: {tool_result.error.message}",
                                           stage="dispatch"))
    result.problems.extend(drop_shared_regions(results))
    result.problems.extend(attach_groundings(result.entities, results))
    result.tool_calls = calls
    result.tool_results = results


def run_steps(agent: "Agent", requests: list[PreparedRequest], raise_errors: bool = True
              ) -> Iterator[str | list[Result | ExtractionError]]:
    """Model step and back half for `requests` together: a short message before each stage (progress for UIs),
    then the list of Results in request order (with `raise_errors=False`, a request that failed is an
    `ExtractionError` in its place instead of raising)."""
    yield "extracting entities, relations and events..."
    raws, outcomes, margins = write_requests(agent, requests, raise_errors)
    yield from finish_steps(agent, requests, raws, outcomes, raise_errors, margins)


def write_requests(agent: "Agent", requests: list[PreparedRequest], raise_errors: bool = True
                   ) -> tuple[dict[int, list[str]], list[Result | ExtractionError | None],
                              dict[int, dict[tuple[str, str, str], float]]]:
    """The model step alone: what the LLM writes for each request (`raws[i]`: one text per window; given pairs
    are classified by scoring instead, with their `margins`), and a failed generation's error in `outcomes[i]`.
    Kept apart from `finish_steps` so a caller that decides the same outputs several ways (calibration) writes
    them once."""
    from reamo.decisions import classify_given_pairs

    outcomes: list[Result | ExtractionError | None] = [None] * len(requests)
    mark = time.perf_counter()
    owners = [i for i, r in enumerate(requests) if not _classifies_pairs(agent, r) for _ in r.segments]
    jobs = [(r, s) for r in requests if not _classifies_pairs(agent, r) for s in r.segments]
    generated = generate_segments(agent, jobs) if jobs else []
    raws: dict[int, list[str]] = {}
    for index, raw in zip(owners, generated):
        if isinstance(raw, ReamoError):
            if raise_errors:
                raise raw
            outcomes[index] = raw
        raws.setdefault(index, []).append(raw if isinstance(raw, str) else "")
    classified = [i for i, r in enumerate(requests) if _classifies_pairs(agent, r)]
    margins: dict[int, dict[tuple[str, str, str], float]] = {}
    if classified:
        for index, (raw, scored) in zip(classified, classify_given_pairs(agent, [requests[i] for i in classified])):
            raws[index] = [raw]
            margins[index] = scored
    seconds = (time.perf_counter() - mark) / max(len(requests), 1)
    for request in requests:
        request.timings["generate"] = seconds
    return raws, outcomes, margins


def finish_steps(agent: "Agent", requests: list[PreparedRequest], raws: dict[int, list[str]],
                 outcomes: list[Result | ExtractionError | None], raise_errors: bool = True,
                 margins: dict[int, dict[tuple[str, str, str], float]] | None = None,
                 ) -> Iterator[str | list[Result | ExtractionError]]:
    """The back half for requests whose model output (`raws[i]`: one text per window of request i) is at hand:
    read (parse, align, merge windows, keep the requested labels), decide relations and events, ground, Result.
    `outcomes[i]` already set (a failed generation) is passed through; `margins` are given-pair decisions'."""
    from reamo.decisions import decide_events, decide_events_by_scoring, decide_relations

    results: dict[int, Result] = {}
    for index, request in enumerate(requests):
        if outcomes[index] is not None:
            continue
        try:
            results[index] = read_outputs(agent, request, raws[index])
            for relation in results[index].relations:
                relation.score = (margins or {}).get(index, {}).get(
                    (relation.head.text, relation.type, relation.tail.text))
        except Exception as error:  # noqa: BLE001 - a request that cannot be read fails alone
            if raise_errors:
                raise
            outcomes[index] = ExtractionError(f"reading the model output failed: {type(error).__name__}: {error}")
    settings = agent.settings
    if results and (settings.triple_none_bias is not None or settings.trigger_none_bias is not None):
        yield "deciding relations and events..."
    elif any(r.events for r in results.values()):
        yield "deciding events..."
    mark = time.perf_counter()
    ordered = sorted(results)
    decide_relations(agent, [(requests[i], results[i]) for i in ordered])
    if settings.trigger_none_bias is not None:
        decide_events_by_scoring(agent, [(requests[i], results[i]) for i in ordered], agent.trigger_lexicon)
    else:
        decide_events(agent, [(requests[i], results[i], raws[i]) for i in ordered])
    for index in ordered:
        if "ner" not in requests[index].tasks:
            results[index].entities = []
    seconds = (time.perf_counter() - mark) / max(len(results), 1)
    if any(r.modalities for r in requests):
        media = sorted({m for r in requests for m in r.modalities})
        yield f"grounding entities in the {' and '.join(media)}..."
    for index, result in results.items():
        result.timings["decide"] = seconds
        try:
            ground(agent, requests[index], result)
        except Exception as error:  # noqa: BLE001 - the dispatcher isolates tools; anything else fails alone
            if raise_errors:
                raise
            outcomes[index] = ExtractionError(f"grounding failed: {type(error).__name__}: {error}")
            continue
        result.timings["total"] = time.perf_counter() - requests[index].started
        outcomes[index] = result
    assert all(outcome is not None for outcome in outcomes)
    yield outcomes  # type: ignore[misc]
