"""Text context in the exact wording of the grounding tools' describers, for media the default cannot encode.

At inference the embedded default (no encoder) reads media as text made by `describe_image` / `describe_audio` /
`describe_video` (reamo.tools). The training media are references (GMNER tweet images are not shipped) or content
we place ourselves (a sentence spoken, shown as on-screen text), so these functions write what the describers would
write for such media: same line formats, so train and inference prompts match.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from reamo.datasets import Example
from reamo.schema import Box, ImageRegion

TYPICAL_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 720), (600, 400), (1200, 900))
WORDS_PER_SECOND = 2.6  # espeak-ng at ~160 words/min, used when no audio file gives the real duration


def position_name(box: Box, width: int, height: int) -> str:
    """Same 3x3 grid names as reamo.tools.image.position_name (imported lazily there; duplicated here to keep the
    data builders free of the OCR / detector imports)."""
    cx, cy = (box.x1 + box.x2) / 2 / max(1, width), (box.y1 + box.y2) / 2 / max(1, height)
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return "-".join(part for part in (row, col) if part) or "center"


def _size(rng: random.Random, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    if width and height:
        return width, height
    return rng.choice(TYPICAL_SIZES)


def gmner_image_context(example: Example, rng: random.Random) -> str:
    """A tweet photo as describe_image reports it: size, no text, faces where the gold has PER boxes."""
    width, height = _size(rng, example.meta.get("image_width"), example.meta.get("image_height"))
    lines = [f"Image {example.image!r}: {width}x{height} pixels.", "No readable text in the image."]
    faces = [g.box for e in example.gold.entities if e.type == "PER" for g in e.groundings
             if isinstance(g, ImageRegion)]
    if faces:
        places = ", ".join(position_name(box, width, height) for box in faces[:5])
        lines.append(f"Faces: {len(faces)} ({places}).")
    else:
        lines.append("No faces detected.")
    return "\n".join(lines)


def text_lines(text: str, rng: random.Random, max_words: int = 7) -> list[str]:
    """Break a sentence into short lines the way OCR returns a poster or a screenshot."""
    words = text.split()
    lines, i = [], 0
    while i < len(words):
        n = rng.randint(3, max_words)
        lines.append(" ".join(words[i : i + n]))
        i += n
    return lines


def image_text_context(name: str, text: str, rng: random.Random, max_lines: int = 8) -> str:
    """An image showing `text` (poster, screenshot, slide) as describe_image reports it."""
    width, height = _size(rng)
    lines = [f"Image {name!r}: {width}x{height} pixels."]
    texts = text_lines(text, rng)
    places = ["top", "center", "bottom"]
    for index, line in enumerate(texts[:max_lines]):
        lines.append(f"Text in image: {line!r} ({places[min(2, index * 3 // max(1, len(texts)))]})")
    if len(texts) > max_lines:
        lines.append(f"... and {len(texts) - max_lines} more text lines.")
    lines.append("No faces detected." if rng.random() < 0.7 else f"People: {rng.randint(1, 3)}.")
    return "\n".join(lines)


def speech_seconds(text: str) -> float:
    return max(1.0, len(text.split()) / WORDS_PER_SECOND)


def audio_context(transcript: str, duration: float | None = None) -> str:
    """Speech as describe_audio reports it (the transcript; ASR errors aside)."""
    duration = speech_seconds(transcript) if duration is None else duration
    if not transcript.strip():
        return f"Audio ({duration:.1f} s): no speech recognized."
    return f'Speech transcript ({duration:.1f} s): "{transcript.strip()}"'


def video_context(name: str, captions: Sequence[str], rng: random.Random, duration: float | None = None,
                  max_lines: int = 6) -> str:
    """A video whose frames show `captions` (titles, lower thirds, signs) as describe_video reports it."""
    duration = duration if duration is not None else round(rng.uniform(3.0, 20.0), 1)
    width, height = _size(rng)
    fps = rng.choice((24.0, 25.0, 30.0))
    frames = min(48, int(duration * 2))
    lines = [f"Video {name!r}: {duration:.1f} s, {width}x{height}, {fps:.1f} fps, {frames} sampled frames."]
    if rng.random() < 0.5:
        lines.append(f"First frame: {'No faces detected.' if rng.random() < 0.5 else 'Faces: 1 (center).'}")
    for caption in list(captions)[:max_lines]:
        place = rng.choice(("bottom", "top", "center", "bottom-left"))
        lines.append(f"Text in video: {caption!r} ({place}, at {rng.uniform(0, duration):.1f} s)")
    if not captions:
        lines.append("No readable text on the key frames.")
    return "\n".join(lines)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]
