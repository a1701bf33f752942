"""Renderings change the pixels where groundings are, and only there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

from reamo.media import LoadedAudio, LoadedVideo, MediaBundle, load_image
from reamo.render import (
    colour_for,
    draw_audio,
    draw_image,
    draw_text_spans,
    draw_video_contact_sheet,
    save_renderings,
)
from reamo.schema import (
    Box,
    Entity,
    ImageRegion,
    Mask,
    Result,
    TextSpan,
    TimeSpan,
    Track,
    TrackFrame,
)

TEXT = "Eileen Collins flew for NASA."


def _result(image_box: Box, mask: np.ndarray | None = None) -> Result:
    person = Entity(
        text="Eileen Collins", type="PER", span=TextSpan(start=0, end=14),
        groundings=[
            ImageRegion(box=image_box, mask=Mask.from_array(mask) if mask is not None else None, source="test"),
            TimeSpan(start=1.0, end=2.0),
            Track(frames=[TrackFrame(frame_index=i, time=i / 2, box=Box(x1=10, y1=10, x2=60, y2=50)) for i in (0, 2)]),
        ],
    )
    org = Entity(text="NASA", type="ORG", span=TextSpan(start=24, end=28))
    return Result(text=TEXT, entities=[person, org])


def test_draw_image_marks_box_and_mask_only() -> None:
    image = load_image(skimage.data.astronaut())
    box = Box(x1=175, y1=55, x2=275, y2=180)
    mask = np.zeros((image.height, image.width), dtype=bool)
    mask[90:150, 200:250] = True
    picture = np.asarray(draw_image(image, _result(box, mask)))
    assert picture.shape == image.array.shape
    changed = np.any(picture != image.array, axis=2)
    assert changed[120, 175:180].all() or changed[120, 175]  # left edge of the box
    assert changed[100:140, 210:240].all()  # inside the mask: tinted
    tinted = picture[120, 225].astype(int) - image.array[120, 225].astype(int)
    assert tinted[0] > 0  # towards the PER red
    assert not changed[300:, 300:].any()  # far from the box nothing is drawn


def test_contact_sheet_draws_track_on_its_frames() -> None:
    frames = np.full((4, 100, 160, 3), 128, dtype=np.uint8)
    video = LoadedVideo(name="v", frames=frames, timestamps=[0, 0.5, 1, 1.5], frame_indices=[0, 1, 2, 3], fps=2,
                        duration=2.0)
    sheet = np.asarray(draw_video_contact_sheet(video, _result(Box(x1=0, y1=0, x2=1, y2=1)), columns=2))
    tile_w, tile_h = 320, 200
    assert sheet.shape[1] == 2 * tile_w
    red = colour_for("PER")

    def has_box(tile: int) -> bool:
        x0, y0 = (tile % 2) * tile_w, (tile // 2) * (tile_h + 18)
        region = sheet[y0 : y0 + tile_h, x0 : x0 + tile_w]
        return bool((np.abs(region.astype(int) - red).sum(axis=2) < 30).any())

    assert [has_box(i) for i in range(4)] == [True, False, True, False]


def test_draw_audio_shades_the_span() -> None:
    samples = (0.5 * np.sin(np.linspace(0, 400, 48000))).astype(np.float32)
    audio = LoadedAudio(name="a", samples=samples)
    picture = np.asarray(draw_audio(audio, _result(Box(x1=0, y1=0, x2=1, y2=1)), width=300, height=100))
    # 3 s of audio over 300 px: the 1-2 s span is x 100..200; top rows there are shaded, outside white.
    assert (picture[5, 120:180] != 255).any(axis=1).all()
    assert (picture[5, 230:290] == 255).all()
    assert (picture[50, :] != 255).any()  # the waveform itself


def test_text_spans_html_and_save(tmp_path: Path) -> None:
    result = _result(Box(x1=0, y1=0, x2=10, y2=10))
    page = draw_text_spans(result)
    assert page.count("<mark") == 2 and ">Eileen Collins<sub>PER</sub></mark>" in page
    assert "flew for" in page
    image = load_image(skimage.data.astronaut())
    paths = save_renderings(result, MediaBundle(image=image), tmp_path / "out")
    assert sorted(p.name for p in paths) == ["image.png", "text.html"]
    assert Image.open(paths[1] if paths[1].suffix == ".png" else paths[0]).size == (image.width, image.height)
