"""The issue's acceptance check as a user runs it: `reamo extract --text ... --audio speech.wav` on the embedded
default gives the spoken entities time spans within 0.3 s of espeak-ng's own word times."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from reamo.cli import app
from reamo.tools.audio import synthesize_speech

SENTENCE = "Rafael Nadal gets engaged to Mery Perello in Mallorca"


@pytest.mark.slow
def test_extract_with_speech_gives_time_spans_near_espeak_word_times(tmp_path) -> None:
    from test_audio_tools import SPEED, VOICE, espeak_word_times

    assert shutil.which("espeak-ng"), "espeak-ng is installed by install.sh"
    wav = synthesize_speech(SENTENCE, tmp_path / "speech.wav", voice=VOICE, speed=SPEED)
    times, _, _ = espeak_word_times(SENTENCE)
    out = tmp_path / "result.json"
    run = CliRunner().invoke(app, ["extract", "--text", SENTENCE, "--audio", str(wav), "--tasks", "ner",
                                   "--json", str(out), "--max-new-tokens", "60"])
    assert run.exit_code == 0, run.output
    result = json.loads(out.read_text())
    spans = [(e["text"], g) for e in result["entities"] for g in e["groundings"] if g["kind"] == "audio"]
    assert spans, f"no entity got an audio span: {result['raw_output']!r}"
    checked = 0
    for text, span in spans:
        words = text.split()
        if not all(w in times for w in words):
            continue  # only entities whose every word espeak-ng spoke as written can be checked
        checked += 1
        assert abs(span["start"] - times[words[0]][0]) <= 0.3, (text, span, times[words[0]])
        assert abs(span["end"] - times[words[-1]][1]) <= 0.3, (text, span, times[words[-1]])
    assert checked, f"no extracted entity is a phrase of the spoken sentence: {spans}"
