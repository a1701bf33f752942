"""`reamo demo`: the shipped examples, end to end, with inputs the demo makes itself (no data files needed).

Each example writes `<name>.json` (the Result) and its pictures (boxes and masks on the image, a contact sheet of
the video track, the audio waveform with entity spans, the text with highlighted spans) into the output folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict

from reamo.schema import Result

logger = logging.getLogger(__name__)


class DemoExample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    text: str
    tasks: str = "ner,re,ee"
    image: str | None = None
    audio: str | None = None
    video: str | None = None


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def make_banner_photo(path: Path, banner: str) -> Path:
    """A real photo (scikit-image's astronaut) with a printed banner, so OCR grounding has text to find."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 420, 300, 490), fill="white")
    draw.text((55, 428), banner, fill="black", font=_font(44))
    image.save(path)
    return path


def make_banner_video(path: Path, banner: str, seconds: float = 3.0, fps: int = 10) -> Path:
    """A short clip of a real photo (scikit-image's coffee) with a printed banner sliding across it."""
    import av
    from skimage import data

    background = Image.fromarray(data.coffee()).convert("RGB").resize((320, 240))
    frames = int(seconds * fps)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.bit_rate = 2_000_000
        for i in range(frames):
            frame = background.copy()
            draw = ImageDraw.Draw(frame)
            x = 10 + int(120 * i / max(frames - 1, 1))
            draw.rectangle((x, 20, x + 170, 70), fill="white")
            draw.text((x + 8, 26), banner, fill="black", font=_font(32))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def build_examples(folder: Path) -> list[DemoExample]:
    """Write the demo inputs into `folder` and describe the examples that use them."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = [
        DemoExample(name="text", text="Rafael Nadal gets engaged to Mery Perello in Mallorca."),
        DemoExample(
            name="image",
            text="NASA astronaut Eileen Collins poses before the shuttle mission.",
            image=str(make_banner_photo(folder / "astronaut.png", "NASA")),
        ),
        DemoExample(
            name="video",
            text="Reuters filmed the morning coffee in Berlin.",
            video=str(make_banner_video(folder / "banner.mp4", "Reuters")),
        ),
    ]
    if shutil.which("espeak-ng"):
        from reamo.tools.audio import synthesize_speech

        # long enough for Whisper (a 3 s espeak-ng clip can come back empty or as another language)
        sentence = "Yesterday in London, the tennis players Rafael Nadal and Roger Federer met for a practice match."
        synthesize_speech(sentence, folder / "speech.wav")
        examples.append(DemoExample(name="audio", text=sentence, audio=str(folder / "speech.wav")))
    else:
        logger.warning("espeak-ng is not installed, so the audio example is skipped (apt-get install espeak-ng)")
    return examples


def run_demo(agent: Any, out: Path, on_result: Callable[[str, Result], Any] | None = None) -> list[Path]:
    """Run every example with `agent`; return the files written under `out`."""
    from tqdm import tqdm

    from reamo.render import save_renderings

    out = Path(out)
    examples = build_examples(out / "inputs")
    written: list[Path] = []
    for example in tqdm(examples, desc="demo examples", unit="example"):
        result = agent.extract(
            text=example.text, image=example.image, audio=example.audio, video=example.video, tasks=example.tasks
        )
        json_path = out / f"{example.name}.json"
        json_path.write_text(result.model_dump_json(indent=2), encoding="utf-8")
        written.append(json_path)
        media = agent.load_media(image=example.image, audio=example.audio, video=example.video)
        written.extend(save_renderings(result, media, out / example.name))
        if on_result is not None:
            on_result(example.name, result)
    return written
