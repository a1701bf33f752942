"""Draw an entity's neighbourhood as a picture (for the UI): nodes coloured by kind, labelled edges, and the image
crop of each grounded mention pasted on its node when the document's image file can be found.

Layout: networkx spring layout (seeded, so the same graph draws the same) when networkx is installed, else a circle
with the starting entity in the middle.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from reamo.kg.query import neighbourhood

logger = logging.getLogger(__name__)

COLOURS = {"Entity": (66, 133, 244), "Event": (234, 67, 53), "Mention": (251, 188, 5), "Document": (52, 168, 83)}
THUMB = 72


def _layout(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], centre: str | None) -> dict[str, tuple]:
    """Node id -> (x, y) in [-1, 1]."""
    ids = [n["id"] for n in nodes]
    try:
        import networkx as nx

        graph = nx.Graph()
        graph.add_nodes_from(ids)
        graph.add_edges_from((e["source"], e["target"]) for e in edges)
        positions = nx.spring_layout(graph, seed=0, k=1.6 / math.sqrt(max(len(ids), 1)))
        return {k: (float(v[0]), float(v[1])) for k, v in positions.items()}
    except ImportError:
        others = [i for i in ids if i != centre]
        positions = {centre: (0.0, 0.0)} if centre in ids else {}
        for index, node_id in enumerate(others):
            angle = 2 * math.pi * index / max(len(others), 1)
            positions[node_id] = (math.cos(angle), math.sin(angle))
        return positions


def _media_file(node: dict[str, Any], media_root: str | os.PathLike[str] | None) -> Path | None:
    name = node.get("media_path")
    if not name:
        return None
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path(media_root) / path] if media_root else [path]
    return next((c for c in candidates if c.is_file()), None)


def _crop(node: dict[str, Any], media_root: str | os.PathLike[str] | None) -> Image.Image | None:
    """The mention's box cut out of its document's image, as a thumbnail; None when the file is not there."""
    path = _media_file(node, media_root)
    if path is None or not node.get("box"):
        return None
    try:
        with Image.open(path) as image:
            x1, y1, x2, y2 = (round(v) for v in node["box"])
            crop = image.convert("RGB").crop((max(0, x1), max(0, y1), max(x1 + 1, x2), max(y1 + 1, y2)))
    except (OSError, ValueError) as error:
        logger.warning("cannot crop %s for %s: %s", path, node["id"], error)
        return None
    crop.thumbnail((THUMB, THUMB))
    return crop


def draw_graph(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], centre: str | None = None,
               size: tuple[int, int] = (900, 700), media_root: str | os.PathLike[str] | None = None) -> Image.Image:
    """Render nodes/edges as returned by `neighbourhood`."""
    width, height = size
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if not nodes:
        draw.text((20, 20), "no such entity in the graph", fill=(0, 0, 0), font=font)
        return canvas
    raw = _layout(nodes, edges, centre)
    margin = 70
    xs = [p[0] for p in raw.values()]
    ys = [p[1] for p in raw.values()]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    pos = {k: (margin + (x - min(xs)) / span_x * (width - 2 * margin),
               margin + (y - min(ys)) / span_y * (height - 2 * margin)) for k, (x, y) in raw.items()}
    for edge in edges:
        if edge["source"] not in pos or edge["target"] not in pos:
            continue
        (x1, y1), (x2, y2) = pos[edge["source"]], pos[edge["target"]]
        draw.line((x1, y1, x2, y2), fill=(160, 160, 160), width=1)
        if edge["label"] not in ("MENTION_OF", "IN_DOC"):
            draw.text(((x1 + x2) / 2, (y1 + y2) / 2), edge["label"][:28], fill=(90, 90, 90), font=font)
    for node in nodes:
        x, y = pos[node["id"]]
        crop = _crop(node, media_root) if node["label"] == "Mention" else None
        colour = COLOURS.get(node["label"], (128, 128, 128))
        if crop is not None:
            left, top = int(x - crop.width / 2), int(y - crop.height / 2)
            canvas.paste(crop, (left, top))
            draw.rectangle((left - 2, top - 2, left + crop.width + 1, top + crop.height + 1), outline=colour, width=2)
        else:
            radius = 14 if node["id"] == centre else 9
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour,
                         outline=(0, 0, 0) if node["id"] == centre else colour)
        label = str(node.get("name") or node["id"])[:30]
        if node["label"] == "Entity" or (node["label"] == "Event" and node.get("type") != node.get("name")):
            label = f"{label} [{node.get('type', '')}]"
        elif node["label"] == "Mention":
            label = f"{node.get('kind')}: {label}"
        draw.text((x + 12, y - 6), label, fill=(0, 0, 0), font=font)
    return canvas


def draw_neighbourhood(db_dir: str | os.PathLike[str], entity: str, depth: int = 1,
                       size: tuple[int, int] = (900, 700), media_root: str | os.PathLike[str] | None = None
                       ) -> Image.Image:
    """Picture of `neighbourhood(db_dir, entity, depth)`; image crops for grounded mentions whose image exists
    (absolute media paths, or names resolved under `media_root`)."""
    nodes, edges = neighbourhood(db_dir, entity, depth=depth)
    centre = next((n["id"] for n in nodes if n["label"] == "Entity"), None)
    return draw_graph(nodes, edges, centre=centre, size=size, media_root=media_root)
