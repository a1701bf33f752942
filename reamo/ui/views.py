"""A `Result` as the values of the UI's components: a table of extractions, highlighted spans, the image's
(mask or box, label) pairs, per-entity audio clips, annotated video frames, and a short chat answer.

Pure functions of (Result, media): no Gradio imports, so they are easy to test and reuse.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from reamo.media import LoadedImage, MediaBundle
from reamo.render import colour_for, draw_image
from reamo.schema import Entity, ImageRegion, NoRegion, Result, TimeSpan, Track

TABLE_HEADERS = ["kind", "type", "text", "span / arguments", "grounding"]

CLIP_PADDING_S = 0.15
"""Seconds of audio kept around an entity's time span so its clip does not start mid-word."""


def entity_label(entity: Entity) -> str:
    return f"{entity.text} ({entity.type})"


def hex_colour(entity_type: str) -> str:
    r, g, b = colour_for(entity_type)
    return f"#{r:02x}{g:02x}{b:02x}"


def grounding_summary(grounding: Any, reasons: bool = False) -> str:
    """One short line per grounding, e.g. 'image box (12, 40)-(200, 310) + mask [ocr]'; a "no region" gives its
    reason only when `reasons` (the reasons are long; the details accordion shows them)."""
    source = f" [{grounding.source}]" if getattr(grounding, "source", "") else ""
    if isinstance(grounding, ImageRegion):
        b = grounding.box
        mask = f" + mask {grounding.mask.area} px" if grounding.mask is not None else ""
        return f"image box ({b.x1:.0f}, {b.y1:.0f})-({b.x2:.0f}, {b.y2:.0f}){mask}{source}"
    if isinstance(grounding, Track):
        if not grounding.frames:
            return f"video track, no frames{source}"
        return f"video track {len(grounding.frames)} frames {grounding.start:.2f}-{grounding.end:.2f} s{source}"
    if isinstance(grounding, TimeSpan):
        return f"audio {grounding.start:.2f}-{grounding.end:.2f} s{source}"
    if isinstance(grounding, NoRegion):
        reason = f": {grounding.reason}" if grounding.reason and reasons else ""
        return f"not in the {grounding.modality}{reason}"
    return str(grounding)


def table_rows(result: Result) -> list[list[str]]:
    """Entities, relations and events as rows of TABLE_HEADERS."""
    rows: list[list[str]] = []
    for entity in result.entities:
        span = f"{entity.span.start}-{entity.span.end}" if entity.span is not None else "not in text"
        grounding = "; ".join(grounding_summary(g) for g in entity.groundings) or "-"
        rows.append(["entity", entity.type, entity.text, span, grounding])
    for relation in result.relations:
        rows.append(["relation", relation.type, f"{relation.head.text} -> {relation.tail.text}", "", ""])
    for event in result.events:
        arguments = "; ".join(f"{a.role}: {a.entity.text}" for a in event.arguments)
        rows.append(["event", event.type, event.trigger.text, arguments, ""])
    return rows


def highlighted(result: Result) -> list[tuple[str, str | None]]:
    """The text cut into (piece, entity type or None) for gr.HighlightedText; overlapping spans keep the first."""
    text = result.text
    spans = sorted(
        ((e.span.start, e.span.end, e.type) for e in result.entities if e.span is not None and e.span.end <= len(text)),
        key=lambda item: (item[0], -item[1]),
    )
    pieces: list[tuple[str, str | None]] = []
    position = 0
    for start, end, entity_type in spans:
        if start < position or end <= start:
            continue
        if start > position:
            pieces.append((text[position:start], None))
        pieces.append((text[start:end], entity_type))
        position = end
    if position < len(text):
        pieces.append((text[position:], None))
    return pieces


def colour_map(result: Result) -> dict[str, str]:
    return {e.type: hex_colour(e.type) for e in result.entities}


def image_annotations(image: LoadedImage, result: Result) -> list[tuple[Any, str]]:
    """(mask as float HxW, or box (x1, y1, x2, y2) in ints, label) pairs for gr.AnnotatedImage."""
    pairs: list[tuple[Any, str]] = []
    for entity in result.entities:
        for grounding in entity.groundings:
            if not isinstance(grounding, ImageRegion):
                continue
            mask = grounding.mask
            if mask is not None and (mask.height, mask.width) == (image.height, image.width) and mask.area > 0:
                pairs.append((mask.to_array().astype(np.float32), entity_label(entity)))
            else:
                b = grounding.box
                pairs.append(((int(b.x1), int(b.y1), int(b.x2), int(b.y2)), entity_label(entity)))
    return pairs


def annotation_colours(result: Result) -> dict[str, str]:
    return {entity_label(e): hex_colour(e.type) for e in result.entities}


def audio_clips(media: MediaBundle, result: Result) -> list[tuple[str, tuple[int, np.ndarray]]]:
    """(label, (sample_rate, int16 samples)) per entity time span, padded by CLIP_PADDING_S."""
    audio = media.audio
    if audio is None:
        return []
    clips: list[tuple[str, tuple[int, np.ndarray]]] = []
    for entity in result.entities:
        spans = [g for g in entity.groundings if isinstance(g, TimeSpan)]
        for number, span in enumerate(spans):
            first = max(0, int((span.start - CLIP_PADDING_S) * audio.sample_rate))
            last = min(len(audio.samples), int((span.end + CLIP_PADDING_S) * audio.sample_rate))
            if last <= first:
                continue
            samples = (np.clip(audio.samples[first:last], -1.0, 1.0) * 32767).astype(np.int16)
            suffix = f" #{number + 1}" if len(spans) > 1 else ""
            label = f"{entity_label(entity)}{suffix} {span.start:.2f}-{span.end:.2f} s"
            clips.append((label, (audio.sample_rate, samples)))
    return clips


def wav_bytes(sample_rate: int, samples: np.ndarray) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def video_frames(media: MediaBundle, result: Result) -> list[tuple[Image.Image, str]]:
    """The sampled frames that carry a tracked box, each drawn with its boxes, captioned with its time."""
    video = media.video
    if video is None:
        return []
    frames: list[tuple[Image.Image, str]] = []
    for position, (frame_index, time) in enumerate(zip(video.frame_indices, video.timestamps)):
        entities: list[Entity] = []
        for entity in result.entities:
            regions = [
                ImageRegion(box=item.box, mask=item.mask, score=item.score, source=track.source)
                for track in entity.groundings
                if isinstance(track, Track)
                for item in track.frames
                if item.frame_index == frame_index
            ]
            if regions:
                entities.append(entity.model_copy(update={"groundings": regions}))
        if not entities:
            continue
        frame = LoadedImage(name=f"{video.name}#{frame_index}", array=np.ascontiguousarray(video.frames[position]))
        names = ", ".join(e.text for e in entities)
        frames.append((draw_image(frame, Result(text=result.text, entities=entities)), f"{time:.2f} s: {names}"))
    return frames


def tool_log(result: Result) -> dict[str, Any]:
    """What the accordion shows: each tool call with its result, plus problems, raw output and the media context."""
    by_id = {r.call_id: r for r in result.tool_results}
    calls = []
    for call in result.tool_calls:
        done = by_id.get(call.id)
        calls.append(
            {
                "call": json.loads(call.model_dump_json()),
                "result": json.loads(done.model_dump_json(exclude={"groundings"})) if done else None,
                "groundings": [grounding_summary(g, reasons=True) for g in done.groundings] if done else [],
            }
        )
    return {
        "tool_calls": calls,
        "problems": [p.message for p in result.problems],
        "raw_output": result.raw_output,
        "context": result.context,
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }


def answer_markdown(result: Result, seconds: float, notes: list[str] | None = None) -> str:
    """The chat reply: counts, then one line per extraction with its groundings."""
    counts = []
    if "ner" in result.tasks:
        counts.append(f"{len(result.entities)} entit{'y' if len(result.entities) == 1 else 'ies'}")
    if "re" in result.tasks:
        counts.append(f"{len(result.relations)} relation{'' if len(result.relations) == 1 else 's'}")
    if "ee" in result.tasks:
        counts.append(f"{len(result.events)} event{'' if len(result.events) == 1 else 's'}")
    lines = [f"**Found {', '.join(counts)}** in {seconds:.1f} s."]
    for entity in result.entities:
        where = "; ".join(grounding_summary(g) for g in entity.groundings)
        lines.append(f"- **{_md(entity.text)}** `{entity.type}`" + (f" — {_md(where)}" if where else ""))
    for relation in result.relations:
        lines.append(f"- {_md(relation.head.text)} —*{_md(relation.type)}*→ {_md(relation.tail.text)}")
    for event in result.events:
        arguments = ", ".join(f"{_md(a.role)}: {_md(a.entity.text)}" for a in event.arguments)
        lines.append(f"- event `{event.type}` triggered by **{_md(event.trigger.text)}**" + (f" ({arguments})" if arguments else ""))
    if result.problems:
        lines.append(f"\n{len(result.problems)} problem(s) noted; see *Tool calls and details*.")
    for note in notes or []:
        lines.append(f"\n_{_md(note)}_")
    return "\n".join(lines)


def _md(text: str) -> str:
    """Escape the Markdown characters that would restyle model-written text."""
    for char in "\\`*_[]<>#|":
        text = text.replace(char, "\\" + char)
    return text
