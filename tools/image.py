"""ImageSegmentation: find the region of an image that shows a named entity, and describe an image as text.

The tool is split into two swappable parts so a text-grounding model (Grounding DINO, OWL-ViT, ...) or SAM 2 can
replace the offline defaults without touching the dispatcher:

* a `RegionProposer` turns (image, target, entity type) into scored `Candidate` boxes; the default reads text with
  RapidOCR (names on signs, jerseys, banners, logos with letters) and finds faces (MTCNN from facenet-pytorch when
  installed, else OpenCV Haar cascades when the installed OpenCV still ships them) and people (OpenCV HOG, same
  condition) for person entities;
* a `MaskRefiner` turns boxes into masks; the default is OpenCV GrabCut started from the box.

When no candidate is good enough the tool answers `NoRegion` rather than guessing a box.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from reamo.errors import MediaError
from reamo.media import LoadedImage, MediaBundle
from reamo.schema import Box, Grounding, ImageRegion, Mask, NoRegion

logger = logging.getLogger(__name__)

DEFAULT_MIN_SCORE = 0.6
"""Candidates scoring below this are not returned: a missing region is better than a wrong one."""


# ---------------------------------------------------------------------------------------------------------------
# Interfaces
# ---------------------------------------------------------------------------------------------------------------


class Candidate(BaseModel):
    """One proposed region; `score` in [0, 1] is how well it matches the target (not just detector confidence)."""

    model_config = ConfigDict(extra="forbid")

    box: Box
    score: float = Field(ge=0.0, le=1.0)
    label: str = Field(default="", description="what the backend saw there: OCR text, 'face', 'person'")
    source: str = Field(default="", description="backend that proposed it, e.g. 'ocr', 'face:mtcnn'")


@runtime_checkable
class RegionProposer(Protocol):
    """Proposes boxes for a target; any text-grounding detector can implement this."""

    def propose(self, image: LoadedImage, target: str, entity_type: str | None) -> list[Candidate]: ...


@runtime_checkable
class MaskRefiner(Protocol):
    """Turns boxes into masks of the whole image (one mask per box, same order)."""

    def refine(self, image: LoadedImage, boxes: list[Box]) -> list[Mask]: ...


# ---------------------------------------------------------------------------------------------------------------
# Text matching
# ---------------------------------------------------------------------------------------------------------------

_PERSON_WORDS = {
    "person", "man", "woman", "boy", "girl", "child", "kid", "player", "people", "face", "he", "she", "guy",
    "lady", "gentleman", "athlete", "singer", "actor", "actress", "president", "king", "queen",
}


def normalize_text(text: str) -> str:
    """Lower case ASCII words separated by single spaces ("Coca-Cola!" -> "coca cola")."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))


def text_similarity(target: str, seen: str) -> float:
    """How well text read in the image (`seen`) names `target`, in [0, 1].

    Spacing and punctuation are ignored ("Coca-Cola" == "COCA COLA"); the target may sit inside a longer text
    ("Nike" in "JUST DO IT NIKE"); a text that is only part of the target scores less, except a whole word of
    the target (a surname on a jersey), which scores 0.75.
    """
    t_words, s_words = normalize_text(target).split(), normalize_text(seen).split()
    t, s = "".join(t_words), "".join(s_words)
    if not t or not s:
        return 0.0
    best = difflib.SequenceMatcher(None, t, s).ratio()
    if len(s) > len(t):
        # Best window of the seen text with the target's length (target inside a longer text).
        for width in {len(t) - 1, len(t), len(t) + 1}:
            if width <= 0 or width > len(s):
                continue
            for start in range(len(s) - width + 1):
                best = max(best, difflib.SequenceMatcher(None, t, s[start : start + width]).ratio())
                if best >= 0.999:
                    return 1.0
    else:
        # Seen text shorter than the target: credit in proportion to how much of the target it covers.
        covered = difflib.SequenceMatcher(None, t, s).find_longest_match(0, len(t), 0, len(s)).size
        best = max(best, covered / len(t))
    for word in t_words:
        if len(word) >= 4 and any(difflib.SequenceMatcher(None, word, w).ratio() >= 0.85 for w in s_words):
            best = max(best, 0.75)
    return float(min(1.0, best))


def normalize_entity_type(entity_type: str | None) -> str | None:
    """Map the many spellings of the coarse types to PER / ORG / LOC / MISC (others pass through upper-cased)."""
    if not entity_type:
        return None
    value = entity_type.strip().upper()
    aliases = {
        "PERSON": "PER", "PEOPLE": "PER", "HUMAN": "PER",
        "ORGANIZATION": "ORG", "ORGANISATION": "ORG", "COMPANY": "ORG", "BRAND": "ORG", "TEAM": "ORG",
        "LOCATION": "LOC", "GPE": "LOC", "FAC": "LOC", "FACILITY": "LOC", "PLACE": "LOC",
        "OTHER": "MISC", "OTHERS": "MISC", "PRODUCT": "MISC",
    }
    return aliases.get(value, value)


# ---------------------------------------------------------------------------------------------------------------
# Detectors (lazy, cached per process)
# ---------------------------------------------------------------------------------------------------------------


class TextLine(BaseModel):
    """One line of text read by OCR."""

    model_config = ConfigDict(extra="forbid")

    text: str
    box: Box
    score: float


_ocr_lock = threading.Lock()
_ocr_engine: Any = None
_cache_lock = threading.Lock()
_CACHE_SIZE = 16
_ocr_cache: OrderedDict[str, list[TextLine]] = OrderedDict()
_face_cache: OrderedDict[str, list[Candidate]] = OrderedDict()
_person_cache: OrderedDict[str, list[Candidate]] = OrderedDict()


def _image_key(image: LoadedImage) -> str:
    array = np.ascontiguousarray(image.array)
    return hashlib.blake2b(array.data, digest_size=16, person=str(array.shape).encode()[:16]).hexdigest()


def _cached(cache: OrderedDict, key: str, compute: Callable[[], Any]) -> Any:
    """Results per image content: describe_image and several targets on one image run each detector once."""
    with _cache_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = compute()
    with _cache_lock:
        cache[key] = value
        while len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    return value


def _get_ocr_engine() -> Any:
    global _ocr_engine
    with _ocr_lock:
        if _ocr_engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as error:  # pragma: no cover - a core dependency
                from reamo.errors import MissingDependencyError

                raise MissingDependencyError(
                    "OCR needs rapidocr-onnxruntime: pip install 'rapidocr-onnxruntime>=1.3,<2'"
                ) from error
            _ocr_engine = RapidOCR()
            logger.info("loaded RapidOCR engine")
        return _ocr_engine


def read_text(image: LoadedImage, min_score: float = 0.5) -> list[TextLine]:
    """Lines of text in the image with their boxes, in reading order (cached per image content)."""

    def compute() -> list[TextLine]:
        engine = _get_ocr_engine()
        with _ocr_lock:  # onnxruntime sessions are thread-safe, but two concurrent OCRs only fight for 2 cores
            result, _ = engine(image.array)
        lines: list[TextLine] = []
        for points, text, score in result or []:
            pts = np.asarray(points, dtype=float)
            x1, y1 = np.clip(pts.min(axis=0), 0, None)
            x2 = min(float(pts[:, 0].max()), image.width)
            y2 = min(float(pts[:, 1].max()), image.height)
            if float(score) >= min_score and text.strip() and x2 > x1 and y2 > y1:
                lines.append(TextLine(text=text.strip(), box=Box(x1=x1, y1=y1, x2=x2, y2=y2), score=float(score)))
        if lines:
            row = max(1.0, float(np.median([line.box.y2 - line.box.y1 for line in lines])))
            lines.sort(key=lambda line: (int((line.box.y1 + line.box.y2) / 2 // row), line.box.x1))
        return lines

    return list(_cached(_ocr_cache, _image_key(image) + f"/{min_score}", compute))


class FaceDetector:
    """Faces with MTCNN (facenet-pytorch, weights inside the wheel) or, failing that, OpenCV's Haar cascade."""

    def __init__(self, min_confidence: float = 0.9, min_size: int = 20, max_side: int = 1024) -> None:
        self.min_confidence = min_confidence
        self.min_size = min_size
        self.max_side = max_side  # MTCNN's image pyramid grows with the image: detect on a bounded copy
        self._lock = threading.Lock()
        self._backend: tuple[str, Any] | None = None

    def _load(self) -> tuple[str, Any]:
        with self._lock:
            if self._backend is None:
                self._backend = ("none", None)
                try:
                    from facenet_pytorch import MTCNN

                    self._backend = ("mtcnn", MTCNN(keep_all=True, device="cpu", min_face_size=self.min_size))
                except Exception as error:  # noqa: BLE001 - optional backend; any import failure falls back
                    logger.debug("facenet-pytorch unavailable (%s); trying OpenCV Haar cascade", error)
                    cascade = _haar_cascade("haarcascade_frontalface_default.xml")
                    if cascade is not None:
                        self._backend = ("haar", cascade)
                if self._backend[0] == "none":
                    logger.warning(
                        "no face detector available: install facenet-pytorch (pip install --no-deps "
                        "facenet-pytorch) or an OpenCV 4.x build with Haar cascades; person regions are skipped"
                    )
            return self._backend

    @property
    def backend(self) -> str:
        return self._load()[0]

    def detect(self, image: LoadedImage) -> list[Candidate]:
        """Faces as candidates labelled 'face', score = detector confidence, largest first."""
        name, model = self._load()
        if model is None:
            return []

        def compute() -> list[Candidate]:
            found: list[Candidate] = []
            scale = min(1.0, self.max_side / max(image.width, image.height))
            pil = image.to_pil()
            if scale < 1.0:
                pil = pil.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            if min(pil.size) < self.min_size:
                # No face of at least min_size pixels fits (MTCNN's image pyramid is then empty and it crashes
                # with "torch.cat(): expected a non-empty list of Tensors"): a tiny image simply has no faces.
                return found
            if name == "mtcnn":
                with self._lock:
                    boxes, probs = model.detect(pil)
                for box, prob in zip(boxes if boxes is not None else [], probs if probs is not None else []):
                    if prob is not None and float(prob) >= self.min_confidence:
                        found.append(_candidate(np.asarray(box) / scale, image, float(prob), "face", "face:mtcnn"))
            else:
                import cv2

                gray = cv2.cvtColor(np.asarray(pil), cv2.COLOR_RGB2GRAY)
                rects = model.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size,) * 2)
                for x, y, w, h in rects if len(rects) else []:
                    box = np.array([x, y, x + w, y + h], dtype=float) / scale
                    found.append(_candidate(box, image, 0.8, "face", "face:haar"))
            found.sort(key=lambda c: c.box.area, reverse=True)
            return found

        key = f"{_image_key(image)}/{name}/{self.min_confidence}/{self.min_size}"
        return list(_cached(_face_cache, key, compute))


def _haar_cascade(filename: str) -> Any:
    """An OpenCV cascade if this OpenCV build still has the classifier and its data files (4.x does, 5.x not)."""
    try:
        import os

        import cv2

        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(folder, filename)
        if not hasattr(cv2, "CascadeClassifier") or not os.path.isfile(path):
            return None
        cascade = cv2.CascadeClassifier(path)
        return None if cascade.empty() else cascade
    except Exception:  # noqa: BLE001
        return None


class PersonDetector:
    """Whole people with OpenCV's HOG people detector, when the installed OpenCV has it (4.x)."""

    def __init__(self, max_side: int = 800) -> None:
        self.max_side = max_side
        self._lock = threading.Lock()
        self._hog: Any = None
        self._checked = False

    def _load(self) -> Any:
        with self._lock:
            if not self._checked:
                self._checked = True
                import cv2

                if hasattr(cv2, "HOGDescriptor") and hasattr(cv2, "HOGDescriptor_getDefaultPeopleDetector"):
                    self._hog = cv2.HOGDescriptor()
                    self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
                else:
                    logger.info("this OpenCV build has no HOG people detector; people come from faces only")
            return self._hog

    def detect(self, image: LoadedImage) -> list[Candidate]:
        hog = self._load()
        if hog is None:
            return []

        def compute() -> list[Candidate]:
            import cv2

            scale = min(1.0, self.max_side / max(image.width, image.height))
            small = cv2.resize(image.array, None, fx=scale, fy=scale) if scale < 1 else image.array
            with self._lock:
                rects, weights = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
            found = [
                _candidate(np.array([x, y, x + w, y + h]) / scale, image, float(min(1.0, max(0.0, wt))),
                           "person", "person:hog")
                for (x, y, w, h), wt in zip(rects, np.ravel(weights)) if wt > 0.5
            ]
            found.sort(key=lambda c: c.box.area, reverse=True)
            return found

        return list(_cached(_person_cache, f"{_image_key(image)}/{self.max_side}", compute))


_defaults_lock = threading.Lock()
_defaults: dict[str, Any] = {}


def _default_faces() -> FaceDetector:
    with _defaults_lock:
        return _defaults.setdefault("faces", FaceDetector())


def _default_people() -> PersonDetector:
    with _defaults_lock:
        return _defaults.setdefault("people", PersonDetector())


def _candidate(box: Sequence[float], image: LoadedImage, score: float, label: str, source: str) -> Candidate:
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), image.width), min(max(x2, 0.0), image.width)))
    y1, y2 = sorted((min(max(y1, 0.0), image.height), min(max(y2, 0.0), image.height)))
    return Candidate(box=Box(x1=x1, y1=y1, x2=x2, y2=y2), score=score, label=label, source=source)


# ---------------------------------------------------------------------------------------------------------------
# Default proposer
# ---------------------------------------------------------------------------------------------------------------


def _union(boxes: Sequence[Box]) -> Box:
    return Box(
        x1=min(b.x1 for b in boxes), y1=min(b.y1 for b in boxes),
        x2=max(b.x2 for b in boxes), y2=max(b.y2 for b in boxes),
    )


def _phrases(lines: list[TextLine], max_lines: int = 3) -> list[tuple[str, Box, float]]:
    """Single lines plus runs of neighbouring lines, since a name is often split ("RAFAEL" / "NADAL")."""
    out = [(line.text, line.box, line.score) for line in lines]
    for i, first in enumerate(lines):
        group = [first]
        for other in lines[i + 1 :]:
            if len(group) >= max_lines:
                break
            last = group[-1].box
            height = max(last.y2 - last.y1, other.box.y2 - other.box.y1, 1.0)
            same_row = abs(other.box.y1 - last.y1) < 0.6 * height and 0 <= other.box.x1 - last.x2 < 1.5 * height
            next_row = 0 <= other.box.y1 - last.y2 < 1.0 * height and (
                min(last.x2, other.box.x2) - max(last.x1, other.box.x1) > -0.5 * height
            )
            if not (same_row or next_row):
                continue
            group.append(other)
            out.append((" ".join(g.text for g in group), _union([g.box for g in group]), min(g.score for g in group)))
    return out


class OfflineRegionProposer:
    """OCR text for names written in the image, faces / people for persons; no download, CPU only.

    Scores: OCR candidates score their text similarity to the target. For a person, a face near text naming
    them wins; otherwise a lone face scores 0.7 and the largest of several 0.65 (the tool cannot recognize who
    it is, so with many faces it is a guess that a higher `min_score` can turn off).
    """

    def __init__(
        self,
        faces: FaceDetector | None = None,
        people: PersonDetector | None = None,
        use_ocr: bool = True,
    ) -> None:
        self.faces = faces or _default_faces()
        self.people = people or _default_people()
        self.use_ocr = use_ocr

    def text_candidates(self, image: LoadedImage, target: str) -> list[Candidate]:
        if not self.use_ocr:
            return []
        found = []
        for text, box, _ocr_score in _phrases(read_text(image)):
            similarity = text_similarity(target, text)
            if similarity > 0.3:
                found.append(Candidate(box=box, score=round(similarity, 4), label=text, source="ocr"))
        found.sort(key=lambda c: (c.score, -c.box.area), reverse=True)
        return found

    def person_candidates(self, image: LoadedImage, named_by: Candidate | None) -> list[Candidate]:
        faces = self.faces.detect(image)
        people = self.people.detect(image) if not faces else []
        bodies = faces or people
        if not bodies:
            return []
        out: list[Candidate] = []
        if named_by is not None and named_by.score >= DEFAULT_MIN_SCORE:
            # The face closest to the text naming the person (caption, jersey) is most likely theirs.
            tx, ty = (named_by.box.x1 + named_by.box.x2) / 2, (named_by.box.y1 + named_by.box.y2) / 2
            ranked = sorted(
                bodies, key=lambda c: np.hypot((c.box.x1 + c.box.x2) / 2 - tx, (c.box.y1 + c.box.y2) / 2 - ty)
            )
            out.append(ranked[0].model_copy(update={"score": round(named_by.score, 4)}))
            out += [c.model_copy(update={"score": 0.3}) for c in ranked[1:]]
            return out
        prior = 0.7 if len(bodies) == 1 else 0.65
        out.append(bodies[0].model_copy(update={"score": prior}))
        out += [c.model_copy(update={"score": 0.4}) for c in bodies[1:]]
        return out

    def propose(self, image: LoadedImage, target: str, entity_type: str | None) -> list[Candidate]:
        kind = normalize_entity_type(entity_type)
        texts = self.text_candidates(image, target)
        wants_person = kind == "PER" or (
            kind is None and bool(set(normalize_text(target).split()) & _PERSON_WORDS)
        )
        if wants_person:
            people = self.person_candidates(image, texts[0] if texts else None)
            # The person's own region outranks the text that names them.
            texts = [c.model_copy(update={"score": round(c.score * 0.9, 4)}) for c in texts]
            candidates = people + texts
        else:
            candidates = texts
        candidates.sort(key=lambda c: c.score, reverse=True)
        return candidates


# ---------------------------------------------------------------------------------------------------------------
# Default mask refiner
# ---------------------------------------------------------------------------------------------------------------


def box_mask(height: int, width: int, box: Box) -> np.ndarray:
    """Boolean (H, W) mask that is True inside the box."""
    mask = np.zeros((height, width), dtype=bool)
    x1, y1 = max(0, int(np.floor(box.x1))), max(0, int(np.floor(box.y1)))
    x2, y2 = min(width, int(np.ceil(box.x2))), min(height, int(np.ceil(box.y2)))
    mask[y1:y2, x1:x2] = True
    return mask


class GrabCutRefiner:
    """OpenCV GrabCut from the box: separates the object from the background inside it, no model needed.

    Runs on a crop around the box scaled to at most `max_side` pixels with a bounded number of iterations, so
    a call costs well under a second; a degenerate result (almost nothing or everything) falls back to the box.
    """

    def __init__(self, iterations: int = 3, max_side: int = 400, min_fraction: float = 0.05) -> None:
        self.iterations = iterations
        self.max_side = max_side
        self.min_fraction = min_fraction

    def refine(self, image: LoadedImage, boxes: list[Box]) -> list[Mask]:
        return [Mask.from_array(self.refine_array(image.array, box)) for box in boxes]

    def refine_array(self, array: np.ndarray, box: Box) -> np.ndarray:
        import cv2

        height, width = array.shape[:2]
        fallback = box_mask(height, width, box)
        x1, y1 = max(0, int(box.x1)), max(0, int(box.y1))
        x2, y2 = min(width, int(np.ceil(box.x2))), min(height, int(np.ceil(box.y2)))
        bw, bh = x2 - x1, y2 - y1
        if bw < 8 or bh < 8:
            return fallback
        margin = int(0.15 * max(bw, bh)) + 8
        cx1, cy1 = max(0, x1 - margin), max(0, y1 - margin)
        cx2, cy2 = min(width, x2 + margin), min(height, y2 + margin)
        crop = np.ascontiguousarray(array[cy1:cy2, cx1:cx2, ::-1])  # GrabCut expects BGR
        scale = min(1.0, self.max_side / max(crop.shape[:2]))
        if scale < 1.0:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rx, ry = int((x1 - cx1) * scale), int((y1 - cy1) * scale)
        rw = max(1, min(int(bw * scale), crop.shape[1] - rx - 1))
        rh = max(1, min(int(bh * scale), crop.shape[0] - ry - 1))
        if rx == 0 and ry == 0 and rw >= crop.shape[1] - 1 and rh >= crop.shape[0] - 1:
            return fallback  # box covers the whole image: GrabCut has no background to learn from
        state = np.zeros(crop.shape[:2], dtype=np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.setRNGSeed(0)
            cv2.grabCut(crop, state, (rx, ry, rw, rh), bgd, fgd, self.iterations, cv2.GC_INIT_WITH_RECT)
        except cv2.error as error:
            logger.debug("GrabCut failed (%s); using the box as mask", error)
            return fallback
        small = ((state == cv2.GC_FGD) | (state == cv2.GC_PR_FGD)).astype(np.uint8)
        if scale < 1.0:
            small = cv2.resize(small, (cx2 - cx1, cy2 - cy1), interpolation=cv2.INTER_NEAREST)
        mask = np.zeros((height, width), dtype=bool)
        mask[cy1:cy2, cx1:cx2] = small[: cy2 - cy1, : cx2 - cx1].astype(bool)
        mask &= fallback
        fraction = mask.sum() / max(1, fallback.sum())
        if fraction < self.min_fraction:
            logger.debug("GrabCut kept %.1f%% of the box; using the box as mask", 100 * fraction)
            return fallback
        return mask


# ---------------------------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------------------------


def locate(
    image: LoadedImage,
    target: str,
    entity_type: str | None,
    proposer: RegionProposer,
    min_score: float = DEFAULT_MIN_SCORE,
) -> Candidate | str:
    """The best candidate for `target`, or the reason none was good enough (shared with the video tool)."""
    candidates = [c for c in proposer.propose(image, target, entity_type) if c.box.area > 0]
    if not candidates:
        kind = normalize_entity_type(entity_type) or "entity"
        return f"nothing in the image matched {target!r} ({kind}): no text naming it and no matching detection"
    best = max(candidates, key=lambda c: c.score)
    if best.score < min_score:
        return (
            f"best candidate for {target!r} was {best.label!r} from {best.source} with score {best.score:.2f}, "
            f"below the threshold {min_score:.2f}"
        )
    return best


def make_image_segmentation(
    proposer: RegionProposer | None = None,
    refiner: MaskRefiner | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
) -> Callable[..., list[Grounding]]:
    """Build the ImageSegmentation tool with the given backends (defaults: offline proposer + GrabCut)."""
    proposer = proposer or OfflineRegionProposer()
    refiner = refiner if refiner is not None else GrabCutRefiner()
    refiner_name = type(refiner).__name__.removesuffix("Refiner").lower() or "mask"

    def image_segmentation(media: MediaBundle, target: str, entity_type: str | None = None) -> list[Grounding]:
        """Segment the region of the image that shows `target`.

        Args:
            media: the user's media (injected, not shown to the model)
            target: entity text or referring expression to find, e.g. "Rafael Nadal"
            entity_type: the entity's type (PER, LOC, ORG, ...) when known; helps choose among candidate regions
        """
        if media is None or media.image is None:
            raise MediaError("ImageSegmentation needs an image, but none was given; pass one with --image")
        if not target or not target.strip():
            return [NoRegion(modality="image", reason="empty target", source="image_segmentation")]
        image = media.image
        found = locate(image, target, entity_type, proposer, min_score)
        if isinstance(found, str):
            logger.info("ImageSegmentation(%r): %s", target, found)
            return [NoRegion(modality="image", reason=found, source="image_segmentation")]
        mask = refiner.refine(image, [found.box])[0] if refiner is not None else None
        return [ImageRegion(box=found.box, mask=mask, score=found.score, source=f"{found.source}+{refiner_name}")]

    return image_segmentation


image_segmentation = make_image_segmentation()
"""Default instance (offline proposer + GrabCut); models load on first call."""


# ---------------------------------------------------------------------------------------------------------------
# Context for the LLM
# ---------------------------------------------------------------------------------------------------------------


def position_name(box: Box, width: int, height: int) -> str:
    """Coarse place of a box in a 3x3 grid: 'top-left', 'center', 'bottom', ..."""
    cx, cy = (box.x1 + box.x2) / 2 / max(1, width), (box.y1 + box.y2) / 2 / max(1, height)
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    return "-".join(part for part in (row, col) if part) or "center"


def describe_image(
    image: LoadedImage,
    max_lines: int = 8,
    faces: FaceDetector | None = None,
    people: PersonDetector | None = None,
) -> str:
    """A few lines of text the LLM can read instead of pixels: the text written in the image and who is there."""
    lines = [f"Image {image.name!r}: {image.width}x{image.height} pixels."]
    texts = read_text(image)
    for line in texts[:max_lines]:
        lines.append(f"Text in image: {line.text!r} ({position_name(line.box, image.width, image.height)})")
    if len(texts) > max_lines:
        lines.append(f"... and {len(texts) - max_lines} more text lines.")
    if not texts:
        lines.append("No readable text in the image.")
    face_list = (faces or _default_faces()).detect(image)
    if face_list:
        places = ", ".join(position_name(c.box, image.width, image.height) for c in face_list[:5])
        lines.append(f"Faces: {len(face_list)} ({places}).")
    else:
        person_list = (people or _default_people()).detect(image)
        lines.append(f"People: {len(person_list)}." if person_list else "No faces detected.")
    return "\n".join(lines)
