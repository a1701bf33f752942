"""Pictures of a `Result`: boxes and masks on the image, tracks on a video contact sheet, time spans on the
waveform, highlighted spans in the text. Used by the CLI (`--render`) and the UI so a person can check groundings.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reamo.files import write_atomic
from reamo.media import LoadedAudio, LoadedImage, LoadedVideo, MediaBundle
from reamo.schema import Box, ImageRegion, Result, TimeSpan, Track

logger = logging.getLogger(__name__)

TYPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "PER": (230, 57, 70),
    "ORG": (29, 120, 230),
    "LOC": (46, 160, 67),
    "MISC": (245, 140, 20),
    "OTHER": (245, 140, 20),
}


def colour_for(entity_type: str) -> tuple[int, int, int]:
    """Fixed colours for the common types, a stable hash-derived hue for any other."""
    key = entity_type.upper()
    if key in TYPE_COLOURS:
        return TYPE_COLOURS[key]
    hue = int(hashlib.md5(key.encode()).hexdigest()[:4], 16) / 0xFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int], size: int):
    font = _font(size)
    x, y = xy
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    y = max(0.0, y - (bottom - top) - 4)
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=colour)
    draw.text((x, y), text, fill=(255, 255, 255), font=font)


def _draw_box(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int], width: int) -> None:
    draw.rectangle([box.x1, box.y1, max(box.x1, box.x2 - 1), max(box.y1, box.y2 - 1)], outline=colour, width=width)


def draw_image(image: LoadedImage, result: Result, mask_alpha: float = 0.4) -> Image.Image:
    """The image with each entity's box, translucent mask and 'text (TYPE)' label, coloured by type."""
    canvas = image.array.astype(np.float32).copy()
    regions = [
        (entity, grounding)
        for entity in result.entities
        for grounding in entity.groundings
        if isinstance(grounding, ImageRegion)
    ]
    for entity, region in regions:
        if region.mask is not None and (region.mask.height, region.mask.width) == (image.height, image.width):
            mask = region.mask.to_array()
            canvas[mask] = (1 - mask_alpha) * canvas[mask] + mask_alpha * np.array(colour_for(entity.type))
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(2, round(max(image.width, image.height) / 300))
    size = max(12, round(max(image.width, image.height) / 45))
    for entity, region in regions:
        colour = colour_for(entity.type)
        _draw_box(draw, region.box, colour, line)
        _label(draw, (region.box.x1, region.box.y1), f"{entity.text} ({entity.type})", colour, size)
    return picture


def draw_video_contact_sheet(
    video: LoadedVideo, result: Result, columns: int = 4, tile_width: int = 320
) -> Image.Image:
    """Sampled frames in a grid with each track's box drawn on the frames it covers, time under each tile."""
    count = len(video.frames)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    scale = tile_width / video.width
    tile_height = max(1, round(video.height * scale))
    caption = 18
    sheet = Image.new("RGB", (columns * tile_width, rows * (tile_height + caption)), (30, 30, 30))
    tracks = [
        (entity, grounding)
        for entity in result.entities
        for grounding in entity.groundings
        if isinstance(grounding, Track)
    ]
    for i, frame in enumerate(video.frames):
        tile = Image.fromarray(frame).resize((tile_width, tile_height))
        draw = ImageDraw.Draw(tile)
        for entity, track in tracks:
            colour = colour_for(entity.type)
            for item in track.frames:
                if item.frame_index != video.frame_indices[i]:
                    continue
                box = Box(x1=item.box.x1 * scale, y1=item.box.y1 * scale, x2=item.box.x2 * scale,
                          y2=item.box.y2 * scale)
                _draw_box(draw, box, colour, 2)
                _label(draw, (box.x1, box.y1), f"{entity.text} ({entity.type})", colour, 11)
        x, y = (i % columns) * tile_width, (i // columns) * (tile_height + caption)
        sheet.paste(tile, (x, y))
        ImageDraw.Draw(sheet).text((x + 4, y + tile_height + 2), f"{video.timestamps[i]:.2f} s", fill=(220, 220, 220),
                                   font=_font(12))
    return sheet


def draw_audio(audio: LoadedAudio, result: Result, width: int = 1200, height: int = 240) -> Image.Image:
    """Waveform (min/max per pixel column) with each entity's time spans shaded and labelled."""
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture, "RGBA")
    duration = max(audio.duration, 1e-6)
    spans = [
        (entity, grounding)
        for entity in result.entities
        for grounding in entity.groundings
        if isinstance(grounding, TimeSpan)
    ]
    for entity, span in spans:
        x1 = int(span.start / duration * width)
        x2 = max(x1 + 1, int(span.end / duration * width))
        draw.rectangle([x1, 0, x2, height - 1], fill=(*colour_for(entity.type), 70))
    samples = audio.samples
    middle = height / 2
    if samples.size:
        edges = np.linspace(0, samples.size, width + 1).astype(int)
        for x in range(width):
            chunk = samples[edges[x] : max(edges[x + 1], edges[x] + 1)]
            low, high = float(chunk.min()), float(chunk.max())
            draw.line([(x, middle - high * middle * 0.95), (x, middle - low * middle * 0.95)], fill=(40, 40, 40))
    draw.line([(0, middle), (width, middle)], fill=(160, 160, 160))
    for entity, span in spans:
        x1 = int(span.start / duration * width)
        _label(draw, (x1 + 2, 22), f"{entity.text} ({entity.type})", colour_for(entity.type), 13)
    return picture


def draw_text_spans(result: Result) -> str:
    """The request text as an HTML fragment with each entity span highlighted in its type's colour."""
    text = result.text
    spans = sorted(
        ((e.span.start, e.span.end, e.type) for e in result.entities if e.span is not None and e.span.end <= len(text)),
        key=lambda item: (item[0], -item[1]),
    )
    parts: list[str] = []
    position = 0
    for start, end, entity_type in spans:
        if start < position:  # overlapping spans: keep the first, the HTML cannot nest them sensibly
            continue
        parts.append(html.escape(text[position:start]))
        r, g, b = colour_for(entity_type)
        parts.append(
            f'<mark style="background: rgba({r},{g},{b},0.3); border-bottom: 2px solid rgb({r},{g},{b})" '
            f'title="{html.escape(entity_type)}">{html.escape(text[start:end])}'
            f"<sub>{html.escape(entity_type)}</sub></mark>"
        )
        position = end
    parts.append(html.escape(text[position:]))
    return '<div class="reamo-text" style="line-height: 1.8">' + "".join(parts) + "</div>"


def _png_bytes(picture: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def save_renderings(result: Result, media: MediaBundle, out_dir: str | os.PathLike) -> list[Path]:
    """Write text.html plus image.png / video.png / audio.png for the modalities given; returns the paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    page = f"<!doctype html><meta charset='utf-8'><title>reamo</title>{draw_text_spans(result)}"
    write_atomic(folder / "text.html", page.encode("utf-8"))
    written.append(folder / "text.html")
    pictures = {
        "image.png": (lambda: draw_image(media.image, result)) if media.image is not None else None,
        "video.png": (lambda: draw_video_contact_sheet(media.video, result)) if media.video is not None else None,
        "audio.png": (lambda: draw_audio(media.audio, result)) if media.audio is not None else None,
    }
    for name, make in pictures.items():
        if make is None:
            continue
        write_atomic(folder / name, _png_bytes(make()))
        written.append(folder / name)
    logger.info("wrote %d renderings to %s", len(written), folder)
    return written
