"""AudioSegmentation on real synthesized speech: Whisper word times checked against espeak-ng's own word times.

Reference times come from espeak-ng itself, not from Whisper: the test drives libespeak-ng (the library behind
the `espeak-ng` binary) through ctypes with the same voice and speed, and records its WORD events, whose
`audio_position` is the millisecond at which each word starts in the synthesized waveform. The test checks that
the library's samples are exactly the first samples of the WAV the binary wrote, so those times index that file.
A word ends where the next one starts; the last word ends at the END event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from reamo.tools.audio import (
    OpenAIWhisperTranscriber,
    Transcript,
    WhisperTranscriber,
    Word,
    describe_audio,
    locate_words,
    make_audio_segmentation,
    speech_segments,
    synthesize_speech,
    whisper_model_dir,
)

from reamo.errors import CheckpointNotFoundError, MediaError, MissingDependencyError
from reamo.media import LoadedAudio, MediaBundle, load_audio
from reamo.schema import NoRegion, TimeSpan

SENTENCE = "Rafael Nadal gets engaged to Mery Perello in Mallorca"
VOICE, SPEED = "en", 160
TOLERANCE = 0.3  # seconds

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")


# ---------------------------------------------------------------------------------------------------------------
# espeak-ng reference word times
# ---------------------------------------------------------------------------------------------------------------


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT from speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset of the word
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds into the synthesized audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_EVENT_WORD, _EVENT_END = 1, 5
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1


@functools.lru_cache(maxsize=None)
def espeak_word_times(text: str) -> tuple[dict[str, tuple[float, float]], np.ndarray, int]:
    """Each word's (start, end) seconds as espeak-ng synthesizes `text`, plus the int16 samples and their rate.

    Cached: libespeak-ng keeps state between syntheses in one process, so a second call may differ by a few
    samples from the binary's output; every test in the session uses the first synthesis.
    """
    library = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
    lib = ctypes.CDLL(library)
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                     ctypes.POINTER(_Event))
    chunks: list[np.ndarray] = []
    events: list[tuple[int, int, int, int]] = []

    def on_audio(wav, count, event):  # type: ignore[no-untyped-def]
        if count > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        index = 0
        while event[index].type != 0:
            e = event[index]
            events.append((e.type, e.text_position, e.length, e.audio_position))
            index += 1
        return 0

    callback = callback_type(on_audio)
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, 0)
    assert rate > 0, "libespeak-ng failed to initialize"
    lib.espeak_SetSynthCallback(callback)
    assert lib.espeak_SetVoiceByName(VOICE.encode()) == 0
    assert lib.espeak_SetParameter(_ESPEAK_RATE, SPEED, 0) == 0
    encoded = text.encode() + b"\0"
    assert lib.espeak_Synth(ctypes.c_char_p(encoded), ctypes.c_size_t(len(encoded)), 0, 0, 0, 0, None, None) == 0
    lib.espeak_Synchronize()
    words = [(text[pos - 1 : pos - 1 + length], ms / 1000) for kind, pos, length, ms in events if kind == _EVENT_WORD]
    end = max(ms for kind, _, _, ms in events if kind == _EVENT_END) / 1000
    times = {word: (start, words[i + 1][1] if i + 1 < len(words) else end) for i, (word, start) in enumerate(words)}
    return times, np.concatenate(chunks), rate


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: one synthesized sentence and one Whisper model for the module
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[float, float]]]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = synthesize_speech(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav", voice=VOICE, speed=SPEED)
    times, library_samples, rate = espeak_word_times(SENTENCE)
    written, written_rate = soundfile.read(path, dtype="int16")
    assert written_rate == rate
    assert np.array_equal(written[: len(library_samples)], library_samples), "binary and library audio differ"
    return path, times


@pytest.fixture(scope="module")
def transcriber() -> WhisperTranscriber:
    return WhisperTranscriber(language="en")


# ---------------------------------------------------------------------------------------------------------------
# Whisper
# ---------------------------------------------------------------------------------------------------------------


@needs_espeak
def test_whisper_locates_spoken_names_within_tolerance_of_espeak_times(speech, transcriber) -> None:
    path, times = speech
    audio = load_audio(path)
    transcript = transcriber.transcribe(audio)
    assert transcript.language == "en"
    assert "nadal" in transcript.text.lower() and "mallorca" in transcript.text.lower()
    for target, first, last in [("Nadal", "Nadal", "Nadal"), ("Mallorca", "Mallorca", "Mallorca"),
                                ("Rafael Nadal", "Rafael", "Nadal"), ("engaged", "engaged", "engaged")]:
        span = locate_words(transcript, target)
        assert span is not None, f"{target!r} not found in {transcript.text!r}"
        assert abs(span.start - times[first][0]) <= TOLERANCE, (target, span, times[first])
        assert abs(span.end - times[last][1]) <= TOLERANCE, (target, span, times[last])
        assert 0 < span.score <= 1


@needs_espeak
def test_audio_segmentation_tool_caches_the_transcript(speech, transcriber) -> None:
    path, times = speech
    tool = make_audio_segmentation(transcriber)
    media = MediaBundle(audio=load_audio(path))
    found = tool(media, "Mallorca", "LOC")
    assert len(found) == 1 and isinstance(found[0], TimeSpan)
    assert abs(found[0].start - times["Mallorca"][0]) <= TOLERANCE
    assert found[0].source == "whisper-base"

    reloaded = MediaBundle(audio=load_audio(path))  # same content, new object: still one transcription
    start = time.perf_counter()
    missing = tool(reloaded, "Roger Federer", "PER")
    assert time.perf_counter() - start < 0.2
    assert len(missing) == 1 and isinstance(missing[0], NoRegion) and missing[0].modality == "audio"
    assert "Roger Federer" in missing[0].reason

    context = describe_audio(media.audio, transcriber)
    assert context.startswith("Speech transcript") and "Nadal" in context


def test_tool_without_audio_raises_media_error() -> None:
    tool = make_audio_segmentation(WhisperTranscriber())
    with pytest.raises(MediaError, match="--audio"):
        tool(MediaBundle(), "Nadal")


def test_silence_gives_no_region(transcriber) -> None:
    silence = LoadedAudio(name="<array>", samples=np.zeros(16000 * 2, dtype=np.float32))
    result = make_audio_segmentation(transcriber)(MediaBundle(audio=silence), "Nadal")
    assert isinstance(result[0], NoRegion)
    assert "no speech" in describe_audio(silence, transcriber)


def test_model_is_assembled_once_atomically_under_reamo_cache_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REAMO_CACHE_DIR", str(tmp_path))
    directory = whisper_model_dir()
    assert directory == tmp_path / "whisper-base-ct2"
    model = directory / "model.bin"
    assert {p.name for p in directory.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    assert model.stat().st_size > 100_000_000
    stamp = model.stat().st_mtime_ns
    assert whisper_model_dir() == directory and model.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in tmp_path.iterdir()] == ["whisper-base-ct2"]  # no staging leftovers


def test_openai_whisper_errors_name_the_fix(tmp_path) -> None:
    missing = tmp_path / "base.pt"
    with pytest.raises(CheckpointNotFoundError, match="checkpoint") as info:
        OpenAIWhisperTranscriber(missing).load()
    assert str(missing) in str(info.value)
    try:
        import whisper  # noqa: F401
    except ImportError:
        missing.write_bytes(b"not a real checkpoint")
        with pytest.raises(MissingDependencyError, match=r"pip install 'reamo\[whisper\]'"):
            OpenAIWhisperTranscriber(missing).load()


def test_synthesize_speech_without_espeak_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="apt-get install espeak-ng"):
        synthesize_speech("hello", tmp_path / "x.wav")


# ---------------------------------------------------------------------------------------------------------------
# Voice activity
# ---------------------------------------------------------------------------------------------------------------


@needs_espeak
def test_speech_segments_cover_speech_and_skip_padded_silence(speech) -> None:
    path, times = speech
    spoken = load_audio(path)
    speech_end = max(end for _, end in times.values())
    lead, tail = 1.5, 1.0
    rng = np.random.default_rng(0)
    padded = np.concatenate([np.zeros(int(lead * 16000)), spoken.samples, np.zeros(int(tail * 16000))])
    padded = (padded + rng.normal(0, 1e-4, padded.size)).astype(np.float32)  # a quiet room, not digital zero
    segments = speech_segments(LoadedAudio(name="padded", samples=padded))
    assert segments, "no speech found"
    assert segments[0].start >= lead - 0.1
    assert segments[-1].end <= lead + speech_end + 0.2
    covered = sum(min(s.end, lead + speech_end) - max(s.start, lead) for s in segments)
    assert covered >= 0.9 * speech_end
    quiet = LoadedAudio(name="quiet", samples=(rng.normal(0, 1e-4, 32000)).astype(np.float32))
    assert speech_segments(quiet) == []


def test_voice_activity_leaves_torch_its_threads() -> None:
    """silero-vad sets torch to one thread when first imported; the LLM in the same process must keep its cores.
    A fresh interpreter, so the import (and its side effect) really happens."""
    code = (
        "import numpy as np, torch\n"
        "torch.set_num_threads(2)\n"
        "from reamo.media import LoadedAudio\n"
        "from reamo.tools.audio import speech_segments\n"
        "quiet = LoadedAudio(name='quiet', samples=np.zeros(16000, dtype=np.float32))\n"
        "assert speech_segments(quiet) == []\n"
        "import silero_vad\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "2"


# ---------------------------------------------------------------------------------------------------------------
# Word matching
# ---------------------------------------------------------------------------------------------------------------


def _transcript(*words: str) -> Transcript:
    return Transcript(
        text=" ".join(words),
        words=[Word(text=w, start=float(i), end=i + 0.8, probability=0.9) for i, w in enumerate(words)],
        language="en",
    )


def test_locate_words_matching_rules() -> None:
    heard = _transcript("Yesterday,", "RAFAEL", "Nadal", "met", "Mery", "Perrelló", "in", "Mal", "lorca.")
    span = locate_words(heard, "Rafael Nadal")
    assert (span.start, span.end) == (1.0, 2.8)
    assert span.score == pytest.approx(0.9)
    perello = locate_words(heard, "Mery Perello")  # accent and doubled letter
    assert (perello.start, perello.end) == (4.0, 5.8)
    assert locate_words(heard, "Mallorca").start == 7.0  # ASR split the word
    hyphenated = _transcript("engaged", "to", "Murray-Perrello", "today")
    assert (locate_words(hyphenated, "Perello").start, locate_words(hyphenated, "Perello").end) == (2.0, 2.8)
    assert locate_words(heard, "Roger Federer") is None
    assert locate_words(heard, "") is None


def test_locate_words_short_targets_need_exact_words_and_surnames_score_lower() -> None:
    heard = _transcript("a", "man", "saw", "Nadal", "win")
    assert locate_words(heard, "Al") is None
    assert locate_words(heard, "man").start == 1.0
    surname = locate_words(heard, "Rafael Nadal")
    assert surname is not None and surname.start == 3.0
    assert surname.score < locate_words(heard, "Nadal").score
