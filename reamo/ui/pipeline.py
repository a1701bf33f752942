"""One UI request, stage by stage: sort the uploads by modality, load them under the UI's limits, then run the
agent's one pipeline (`Agent.extract_steps`, the same chain every caller runs) while reporting its progress
("reading the image...", "extracting...", "deciding relations and events...") so the chat can stream it.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from reamo.errors import ConfigError, MediaError
from reamo.media import MediaBundle, MediaLimits, load_audio, load_image, load_video
from reamo.schema import ALL_TASKS, Result, Task

logger = logging.getLogger(__name__)

MODALITIES = ("image", "audio", "video")

UI_LIMITS = MediaLimits(
    max_bytes=50_000_000, max_audio_seconds=120.0, max_video_seconds=60.0, max_video_frames=32
)
"""Tighter than the library defaults: a shared CPU demo server should answer each request in seconds."""

class Stage(BaseModel):
    """A progress report: the step that is starting now."""

    message: str


class Outcome(BaseModel):
    """The end of one request: the Result and the media it was computed on (for drawing)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    result: Result
    media: MediaBundle
    seconds: float
    notes: list[str] = []


def parse_tasks(tasks: Sequence[str] | str | None) -> tuple[Task, ...]:
    """Checkbox values ("ner", "NER", ...) or "ner,re" -> tasks in canonical order; raises ConfigError if none."""
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    chosen = {str(t).strip().lower() for t in (tasks or []) if str(t).strip()}
    unknown = sorted(chosen - set(ALL_TASKS))
    if unknown:
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(ALL_TASKS)}")
    if not chosen:
        raise ConfigError("choose at least one task (NER, RE or EE)")
    return tuple(t for t in ALL_TASKS if t in chosen)


def parse_labels(labels: str | Sequence[str] | None) -> list[str] | None:
    """'PER, ORG, LOC' -> ['PER', 'ORG', 'LOC']; empty means the default label set."""
    if labels is None:
        return None
    items = labels.replace("\n", ",").split(",") if isinstance(labels, str) else list(labels)
    cleaned = [item.strip() for item in items if item and item.strip()]
    return cleaned or None


def guess_modality(path: str | Path) -> str | None:
    """The modality a file's name suggests (None when the name says nothing); content decides in `load_upload`."""
    kind, _ = mimetypes.guess_type(str(path))
    if kind is None:
        return None
    major = kind.split("/", 1)[0]
    return major if major in MODALITIES else None


_LOADERS = {"image": load_image, "audio": load_audio, "video": load_video}


def load_upload(path: str | Path, limits: MediaLimits) -> tuple[str, Any]:
    """Load one uploaded file as the modality its name suggests, else the first loader that accepts it.

    Raises MediaError naming the file and the formats accepted when nothing can read it.
    """
    name = Path(path).name
    guessed = guess_modality(path)
    if guessed is not None:
        try:
            return guessed, _LOADERS[guessed](str(path), limits)
        except MediaError as error:
            raise MediaError(_short(error, path)) from error
    errors: list[str] = []
    for modality in ("image", "audio", "video"):
        try:
            return modality, _LOADERS[modality](str(path), limits)
        except MediaError as error:
            errors.append(f"{modality}: {_short(error, path)}")
    raise MediaError(
        f"{name}: not a supported image, audio or video file ({'; '.join(errors)}). "
        "Upload an image (JPEG, PNG, WebP...), audio (WAV, FLAC, MP3, OGG...) or video (MP4, WebM, MKV...)."
    )


def _short(error: Exception, path: str | Path) -> str:
    """The loader's message with the upload's temp path cut to its file name (server paths stay private)."""
    return str(error).replace(str(path), Path(path).name)


def load_uploads(paths: Sequence[str | Path], limits: MediaLimits) -> tuple[MediaBundle, list[str]]:
    """The bundle for a request (at most one file per modality) and notes about files that were skipped."""
    loaded: dict[str, Any] = {}
    notes: list[str] = []
    for path in paths:
        modality, item = load_upload(path, limits)
        if modality in loaded:
            notes.append(f"{Path(path).name} skipped: only one {modality} per message is used")
            continue
        loaded[modality] = item
    return MediaBundle(**loaded), notes


def run_request(
    agent: Any,
    text: str,
    files: Sequence[str | Path],
    tasks: Sequence[str] | str,
    labels: str | Sequence[str] | None = None,
    limits: MediaLimits = UI_LIMITS,
) -> Iterator[Stage | Outcome]:
    """Yield a Stage before each step and finally the Outcome; errors propagate (the caller shows them)."""
    started = time.perf_counter()
    chosen = parse_tasks(tasks)
    text = (text or "").strip()
    if not text and not files:
        raise ConfigError("nothing to extract from: type some text and/or attach an image, audio or video")
    timings: dict[str, float] = {}
    if files:
        yield Stage(message="loading the upload...")
    media, notes = load_uploads(files, limits)
    timings["load_media"] = time.perf_counter() - started

    result: Result | None = None
    for step in agent.extract_steps(
        text=text, image=media.image, audio=media.audio, video=media.video, tasks=chosen,
        labels=parse_labels(labels),
    ):
        if isinstance(step, Result):
            result = step
        else:
            yield Stage(message=step)
    assert result is not None
    result.timings["load_media"] = timings["load_media"]
    yield Outcome(result=result, media=media, seconds=time.perf_counter() - started, notes=notes)


def extract_once(
    agent: Any,
    text: str,
    files: Sequence[str | Path],
    tasks: Sequence[str] | str,
    labels: str | Sequence[str] | None = None,
    limits: MediaLimits = UI_LIMITS,
) -> Outcome:
    """`run_request` without the progress reports (the API endpoint)."""
    outcome: Outcome | None = None
    for item in run_request(agent, text, files, tasks, labels, limits):
        if isinstance(item, Outcome):
            outcome = item
    assert outcome is not None  # run_request always ends with an Outcome or raises
    return outcome
