"""Example requests for the UI, one click away: the shared photos when they sit beside the repository, plus
inputs made at start-up from scikit-image photos and espeak-ng speech (so the examples work on any install).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from reamo.demo import make_banner_photo, make_banner_video

logger = logging.getLogger(__name__)


class UIExample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str
    text: str
    file: str | None = None
    tasks: list[str] = ["ner", "re", "ee"]
    labels: str = ""


def shared_media_dir() -> Path:
    """`../shared/data/media` beside the repository root (or `$REAMO_DATA_DIR/media`)."""
    root = os.environ.get("REAMO_DATA_DIR")
    if root:
        return Path(root) / "media"
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "media"


_SHARED_IMAGES = [
    ("truck.jpg", "Pickup truck", "Carlos Mendez parked his Toyota pickup outside the red house in Havana."),
    ("groceries.jpg", "Groceries", "Maria Lopez loaded the Whole Foods groceries into her Nissan in Boston."),
    ("cars.jpg", "Classic cars", "Classic Chevrolet cars wait for tourists on the Malecon in Havana, Cuba."),
]


def build_examples(folder: Path, shared: Path | None = None) -> list[UIExample]:
    """Make the start-up inputs in `folder` (a temp dir) and list every example; missing sources are skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = [
        UIExample(
            label="Astronaut + NASA banner",
            text="NASA astronaut Eileen Collins poses before the shuttle mission.",
            file=str(make_banner_photo(folder / "astronaut_nasa.png", "NASA")),
        ),
        UIExample(label="Text only", text="Rafael Nadal gets engaged to Mery Perello in Mallorca."),
    ]
    shared = shared if shared is not None else shared_media_dir()
    for filename, label, text in _SHARED_IMAGES:
        path = shared / "images" / filename
        if path.is_file():
            examples.append(UIExample(label=label, text=text, file=str(path)))
    if shutil.which("espeak-ng"):
        from reamo.tools.audio import synthesize_speech

        # long enough for Whisper's language detection (a 3 s espeak clip can be heard as another language)
        sentence = "Yesterday in London, the tennis players Rafael Nadal and Roger Federer met for a practice match."
        try:
            speech = synthesize_speech(sentence, folder / "speech.wav")
            examples.append(UIExample(label="Speech (espeak-ng)", text=sentence, file=str(speech)))
        except RuntimeError as error:
            logger.warning("no speech example: %s", error)
    else:
        logger.info("espeak-ng is not installed, so the speech example is skipped (apt-get install espeak-ng)")
    try:
        clip = make_banner_video(folder / "reuters.mp4", "Reuters")
        examples.append(UIExample(label="Video + Reuters banner", text="Reuters filmed the morning coffee in Berlin.",
                                  file=str(clip), tasks=["ner"]))
    except Exception as error:  # noqa: BLE001 - an encoder missing from PyAV must not stop the UI
        logger.warning("no video example: %s", error)
    return examples
