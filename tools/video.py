"""VideoTracking: find a named entity on a key frame, then follow its box over the sampled frames.

Two swappable parts: something that finds the target in one frame (a `RegionProposer` from `reamo.tools.image`,
or a whole image tool such as `image_segmentation`) and a `BoxTracker` that follows a box (default: OpenCV's MIL
tracker, built into every OpenCV wheel; `reamo.tools.sam2_backend.Sam2VideoTracker` for SAM 2).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
from reamo.tools.image import (
    DEFAULT_MIN_SCORE,
    OfflineRegionProposer,
    RegionProposer,
    describe_image,
    locate,
    position_name,
    read_text,
)

from reamo.errors import MediaError
from reamo.media import LoadedImage, LoadedVideo, MediaBundle
from reamo.schema import Box, Grounding, ImageRegion, NoRegion, Track, TrackFrame

logger = logging.getLogger(__name__)
_SINGLE_THREAD_CV = threading.Lock()


@runtime_checkable
class BoxTracker(Protocol):
    """Follows the box given on frame `start` over all sampled frames of the video (forward and backward)."""

    def track(self, video: LoadedVideo, start: int, box: Box) -> Track: ...


def frame_image(video: LoadedVideo, index: int) -> LoadedImage:
    """One sampled frame as a `LoadedImage`, named after the video and time."""
    return LoadedImage(name=f"{video.name}@{video.timestamps[index]:.2f}s", array=video.frames[index])


class OpenCVTracker:
    """OpenCV's MIL tracker: no model file, a few tens of milliseconds per frame, drifts on long occlusions.

    Frames are tracked forward from the key frame and backward from it, so the track covers the whole video.
    Frames where the tracker reports a loss are left out of the track (the object is not claimed there).
    """

    source = "opencv-mil"

    def __init__(self, max_side: int = 480, search_fraction: float = 0.15, min_health: float = 0.35) -> None:
        self.max_side = max_side
        # MIL never says how sure it is: each tracked box is compared with the key frame's (normalized
        # correlation of the two patches, `patch_similarity`); below `min_health` the tracker has drifted onto
        # something else, and the track stops there instead of following it.
        self.min_health = min_health
        # Sampled frames are far apart in time (0.5 s at 2 fps), so objects move much further between them than
        # MIL's default 25-pixel search window expects: search a fraction of the frame instead.
        self.search_fraction = search_fraction

    def _create(self, frame_side: int) -> Any:
        import cv2

        params = cv2.TrackerMIL_Params()
        params.samplerSearchWinSize = float(max(25, int(self.search_fraction * frame_side)))
        return cv2.TrackerMIL_create(params)

    def _follow(self, frames: np.ndarray, indices: list[int], box: Box, scale: float) -> dict[int, tuple[Box, float]]:
        import cv2

        # MIL draws random samples inside OpenCV's parallel loops, whose worker threads each have their own RNG:
        # with several threads the track depends on scheduling. One thread + a fixed seed = same input, same track.
        with _SINGLE_THREAD_CV:
            previous = cv2.getNumThreads()
            cv2.setNumThreads(1)
            try:
                return self._follow_mil(frames, indices, box, scale)
            finally:
                cv2.setNumThreads(previous)

    def _follow_mil(self, frames: np.ndarray, indices: list[int], box: Box,
                    scale: float) -> dict[int, tuple[Box, float]]:
        import cv2

        first = frames[indices[0]]
        template = _patch(first, box)
        h, w = first.shape[:2]
        cv2.setRNGSeed(0)  # MIL samples patches at random: same input, same track
        tracker = self._create(int(max(h, w) * scale))
        rect = (
            int(box.x1 * scale), int(box.y1 * scale),
            max(2, int((box.x2 - box.x1) * scale)), max(2, int((box.y2 - box.y1) * scale)),
        )
        tracker.init(self._prepare(first, scale), rect)
        out: dict[int, tuple[Box, float]] = {}
        for index in indices[1:]:
            ok, (x, y, bw, bh) = tracker.update(self._prepare(frames[index], scale))
            if not ok or bw <= 0 or bh <= 0:
                logger.debug("MIL tracker lost the target at sampled frame %d", index)
                break
            x1, y1 = max(0.0, x / scale), max(0.0, y / scale)
            x2, y2 = min(float(w), (x + bw) / scale), min(float(h), (y + bh) / scale)
            if x2 <= x1 or y2 <= y1:
                break
            tracked = Box(x1=x1, y1=y1, x2=x2, y2=y2)
            health = patch_similarity(template, _patch(frames[index], tracked))
            if health < self.min_health:
                # MIL's random sampling sometimes lands beside the target: look for the key frame's patch around
                # where MIL put it (template matching), and go on from there only if it is found
                found = self._rematch(frames[index], first, box, tracked)
                if found is None:
                    logger.debug("tracked region no longer looks like the key frame's at sampled frame %d (%.2f)",
                                 index, health)
                    break
                tracked, health = found
                tracker = self._create(int(max(h, w) * scale))
                tracker.init(self._prepare(frames[index], scale), (
                    int(tracked.x1 * scale), int(tracked.y1 * scale),
                    max(2, int((tracked.x2 - tracked.x1) * scale)), max(2, int((tracked.y2 - tracked.y1) * scale))))
            out[index] = (tracked, health)
        return out

    def _rematch(self, frame: np.ndarray, first: np.ndarray, box: Box, near: Box) -> tuple[Box, float] | None:
        """The key frame's box content found in `frame` within a search window around `near` (normalized
        cross-correlation, `cv2.matchTemplate`), with its similarity, or None below `min_health`."""
        import cv2

        h, w = frame.shape[:2]
        x1, y1, x2, y2 = int(box.x1), int(box.y1), max(int(box.x2), int(box.x1) + 2), max(int(box.y2), int(box.y1) + 2)
        template = cv2.cvtColor(np.ascontiguousarray(first[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
        bw, bh = template.shape[1], template.shape[0]
        margin = int(self.search_fraction * max(h, w))
        sx1, sy1 = max(0, int(near.x1) - margin), max(0, int(near.y1) - margin)
        sx2, sy2 = min(w, int(near.x1) + bw + margin), min(h, int(near.y1) + bh + margin)
        if sx2 - sx1 < bw or sy2 - sy1 < bh:
            return None
        window = cv2.cvtColor(np.ascontiguousarray(frame[sy1:sy2, sx1:sx2]), cv2.COLOR_RGB2GRAY)
        scores = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if not np.isfinite(best) or best < self.min_health:
            return None
        found = Box(x1=float(sx1 + bx), y1=float(sy1 + by), x2=float(sx1 + bx + bw), y2=float(sy1 + by + bh))
        return found, patch_similarity(_patch(first, box), _patch(frame, found))

    @staticmethod
    def _prepare(frame: np.ndarray, scale: float) -> np.ndarray:
        import cv2

        bgr = np.ascontiguousarray(frame[:, :, ::-1])
        return cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else bgr

    def track(self, video: LoadedVideo, start: int, box: Box) -> Track:
        frames = video.frames
        count = len(frames)
        scale = min(1.0, self.max_side / max(video.width, video.height))
        boxes: dict[int, tuple[Box, float]] = {start: (box, 1.0)}
        boxes.update(self._follow(frames, list(range(start, count)), box, scale))
        boxes.update(self._follow(frames, list(range(start, -1, -1)), box, scale))
        track_frames = [
            TrackFrame(frame_index=video.frame_indices[i], time=float(video.timestamps[i]), box=boxes[i][0],
                       score=round(boxes[i][1], 4))
            for i in sorted(boxes)
        ]
        health = float(np.mean([boxes[i][1] for i in boxes]))
        return Track(frames=track_frames, source=self.source, score=round(health, 4))


def _patch(frame: np.ndarray, box: Box, side: int = 32) -> np.ndarray:
    """The box's pixels as a side x side grayscale patch (what `patch_similarity` compares)."""
    import cv2

    h, w = frame.shape[:2]
    x1, y1 = int(max(0, min(w - 1, box.x1))), int(max(0, min(h - 1, box.y1)))
    x2, y2 = int(max(x1 + 1, min(w, box.x2))), int(max(y1 + 1, min(h, box.y2)))
    gray = cv2.cvtColor(np.ascontiguousarray(frame[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)


def patch_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized cross-correlation of two equal-size patches, clipped to [0, 1] (1 = the same appearance up to
    brightness and contrast; a flat patch matches nothing)."""
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return max(0.0, min(1.0, float((a * b).sum()) / norm)) if norm > 1e-6 else 0.0


def key_frame_order(count: int, max_key_frames: int) -> list[int]:
    """Sampled-frame indices to search, in time order: evenly spread, the first frame always included."""
    if count <= 0:
        return []
    picks = np.linspace(0, count - 1, num=min(count, max_key_frames)).round().astype(int)
    return sorted({int(i) for i in picks})


def _finder(
    image_tool_or_proposer: RegionProposer | Callable[..., list[Grounding]], min_score: float
) -> Callable[[LoadedImage, str, str | None], tuple[Box, float, str] | str]:
    """Uniform 'find the target in this frame' over a proposer or an image tool."""
    if isinstance(image_tool_or_proposer, RegionProposer):
        proposer = image_tool_or_proposer

        def find(image: LoadedImage, target: str, entity_type: str | None) -> tuple[Box, float, str] | str:
            found = locate(image, target, entity_type, proposer, min_score)
            return found if isinstance(found, str) else (found.box, found.score, found.source)

        return find

    tool = image_tool_or_proposer

    def find_with_tool(image: LoadedImage, target: str, entity_type: str | None) -> tuple[Box, float, str] | str:
        groundings = tool(MediaBundle(image=image), target, entity_type)
        for item in groundings:
            if isinstance(item, ImageRegion):
                return item.box, float(item.score if item.score is not None else 1.0), item.source
        reasons = [item.reason for item in groundings if isinstance(item, NoRegion)]
        return reasons[0] if reasons else "the image tool found nothing"

    return find_with_tool


def make_video_tracking(
    image_tool_or_proposer: RegionProposer | Callable[..., list[Grounding]] | None = None,
    tracker: BoxTracker | None = None,
    max_key_frames: int = 4,
    min_score: float = DEFAULT_MIN_SCORE,
    min_track_score: float = 0.45,
) -> Callable[..., list[Grounding]]:
    """Build the VideoTracking tool: find the target on up to `max_key_frames` key frames, then track it.

    A track's score is the key-frame match score times the tracker's health (how well the followed region kept
    its appearance, averaged over the frames); below `min_track_score` the answer is "no region", with the reason:
    a track on the wrong thing is worse than none."""
    find = _finder(image_tool_or_proposer or OfflineRegionProposer(), min_score)
    tracker = tracker or OpenCVTracker()

    def video_tracking(media: MediaBundle, target: str, entity_type: str | None = None) -> list[Grounding]:
        """Track the object or person `target` through the video.

        Args:
            media: the user's media (injected, not shown to the model)
            target: entity text or referring expression to follow, e.g. "Rafael Nadal"
            entity_type: the entity's type (PER, LOC, ORG, ...) when known; helps choose among candidate regions
        """
        if media is None or media.video is None:
            raise MediaError("VideoTracking needs a video, but none was given; pass one with --video")
        video = media.video
        if not target or not target.strip():
            return [NoRegion(modality="video", reason="empty target", source="video_tracking")]
        reasons: list[str] = []
        for index in key_frame_order(len(video.frames), max_key_frames):
            found = find(frame_image(video, index), target, entity_type)
            if isinstance(found, str):
                reasons.append(f"{video.timestamps[index]:.2f}s: {found}")
                continue
            box, score, source = found
            track = tracker.track(video, index, box)
            health = track.score if track.score is not None else 1.0
            for frame in track.frames:
                frame.score = round(score * (frame.score if frame.score is not None else 1.0), 4)
            track.score = round(score * health, 4)
            track.source = f"{source}+{track.source or type(tracker).__name__}"
            if track.score < min_track_score:
                reasons.append(f"{video.timestamps[index]:.2f}s: found with score {score:.2f} by {source}, but the "
                               f"track's score {track.score:.2f} (tracker health {health:.2f}) is below "
                               f"{min_track_score:.2f}")
                continue
            return [track]
        reason = f"{target!r} not found on {len(reasons)} key frames; " + "; ".join(reasons[:2])
        logger.info("VideoTracking(%r): %s", target, reason)
        return [NoRegion(modality="video", reason=reason, source="video_tracking")]

    return video_tracking


video_tracking = make_video_tracking()
"""Default instance (OCR/face proposer on key frames + OpenCV MIL tracker); models load on first call."""


def describe_video(video: LoadedVideo, key_frames: int = 2, max_lines: int = 6) -> str:
    """A few lines for the LLM: length, frame count, and the text / faces seen on a couple of key frames."""
    header = (
        f"Video {video.name!r}: {video.duration:.1f} s, {video.width}x{video.height}, {video.fps:.1f} fps, "
        f"{len(video.frames)} sampled frames."
    )
    lines = [header]
    seen: dict[str, str] = {}
    for index in key_frame_order(len(video.frames), key_frames):
        image = frame_image(video, index)
        for line in read_text(image):
            key = line.text.lower()
            if key not in seen:
                seen[key] = (
                    f"Text in video: {line.text!r} ({position_name(line.box, image.width, image.height)}, "
                    f"at {video.timestamps[index]:.1f} s)"
                )
        if index == 0:
            summary = describe_image(image, max_lines=0).splitlines()[-1]
            if summary.startswith(("Faces", "People")):
                lines.append(f"First frame: {summary}")
    lines.extend(list(seen.values())[:max_lines])
    if not seen:
        lines.append("No readable text on the key frames.")
    return "\n".join(lines)
