"""Speech versions of dataset sentences: espeak-ng WAVs (cached) and audio-grounded instruction examples.

Synthesis takes ~0.1-0.3 s per sentence, so this is for small counts: a few hundred examples for stages 2 and 4,
and the speech version of an evaluation set (`speech_clips` on dev examples is allowed: only building *training*
examples refuses dev). Voices and speeds vary per sentence (deterministic from the seed and the example id), so the
same call always gives the same files, which are cached by content and written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path

import soundfile
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from reamo.files import atomic_path
from reamo.datasets import Example
from reamo.tuning.data import BuildOptions, InstructionExample, refuse_eval_split
from reamo.tuning.invocation import invocation_example

logger = logging.getLogger(__name__)

VOICES = ("en", "en-us", "en-gb")
SPEED_RANGE = (140, 180)


class SpeechClip(BaseModel):
    """One synthesized sentence: which example, where the WAV is, how it was spoken."""

    model_config = ConfigDict(extra="forbid")

    example_id: str
    text: str
    path: str
    voice: str
    speed: int
    duration: float


def default_speech_cache() -> Path:
    from reamo.files import cache_root

    return cache_root() / "speech"


def speech_clips(
    examples: Sequence[Example],
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    voices: Sequence[str] = VOICES,
    speed_range: tuple[int, int] = SPEED_RANGE,
) -> list[SpeechClip]:
    """Speak each example's text into `cache_dir` (default: the Reamo cache's speech/), reusing cached files."""
    from reamo.tools.audio import synthesize_speech

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_speech_cache()
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for example in tqdm(examples, desc="espeak-ng", unit="clip", disable=len(examples) < 20):
        rng = random.Random(f"speech-{seed}-{example.id}")
        voice, speed = rng.choice(list(voices)), rng.randint(*speed_range)
        digest = hashlib.sha1(f"{voice}|{speed}|{example.text}".encode("utf-8")).hexdigest()[:20]
        path = folder / f"{digest}.wav"
        if not path.is_file():
            with atomic_path(path, suffix=".wav") as partial:
                synthesize_speech(example.text, partial, voice=voice, speed=speed)
        info = soundfile.info(str(path))
        clips.append(SpeechClip(example_id=example.id, text=example.text, path=str(path), voice=voice, speed=speed,
                                duration=info.frames / info.samplerate))
    return clips


def speech_examples(
    examples: Sequence[Example],
    split: str,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    with_text_prob: float = 0.3,
    stage: int = 4,
    options: BuildOptions | None = None,
) -> list[InstructionExample]:
    """Audio-grounded examples: the sentence is spoken (audio only, or with the text too); every mention gets an
    AudioSegmentation call. Media hold the real WAV path, so encoder models can train on them as well."""
    refuse_eval_split(split)
    options = options or BuildOptions()
    rng = random.Random(f"speech-examples-{seed}")
    clips = speech_clips(examples, cache_dir, seed)
    out = []
    for example, clip in zip(examples, clips, strict=True):
        combination = "T+A" if rng.random() < with_text_prob else "A"
        item = invocation_example(example, combination, split, rng, options, audio_path=clip.path,
                                  audio_seconds=clip.duration, stage=stage)
        out.append(item.model_copy(update={"id": f"{example.id}#speech:{combination}"}))
    return out
