"""ImageSegmentation on real photos: OCR finds printed names, MTCNN finds faces, GrabCut masks stay in the box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont
from reamo.tools.image import (
    FaceDetector,
    GrabCutRefiner,
    describe_image,
    image_segmentation,
    make_image_segmentation,
    text_similarity,
)

from reamo.errors import MediaError
from reamo.media import MediaBundle, load_image
from reamo.schema import Box, ImageRegion, NoRegion

PHOTO = Path(skimage.data.__file__).parent / "rocket.jpg"  # a real 640x427 photo that ships with scikit-image
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
ASTRONAUT_FACE = Box(x1=175, y1=55, x2=275, y2=180)  # Eileen Collins' face in skimage.data.astronaut()


@pytest.fixture(scope="module")
def banner() -> tuple[MediaBundle, Box]:
    """A real photo with a sponsor banner printed on it; returns the media and where the text was drawn."""
    photo = Image.open(PHOTO).convert("RGB")
    draw = ImageDraw.Draw(photo)
    draw.rectangle([20, 30, 440, 100], fill="white")  # top-left of the photo
    if FONT.is_file():
        font = ImageFont.truetype(str(FONT), 48)
        draw.text((30, 35), "COCA COLA", font=font, fill=(200, 0, 0))
        x1, y1, x2, y2 = draw.textbbox((30, 35), "COCA COLA", font=font)
    else:  # pragma: no cover - machines without DejaVu
        import cv2

        array = np.asarray(photo).copy()
        cv2.putText(array, "COCA COLA", (30, 85), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (200, 0, 0), 4)
        photo, (x1, y1, x2, y2) = Image.fromarray(array), (30, 48, 340, 88)
    return MediaBundle(image=load_image(photo)), Box(x1=x1, y1=y1, x2=x2, y2=y2)


def test_text_similarity_ignores_case_spacing_and_punctuation() -> None:
    assert text_similarity("Coca-Cola", "COCA COLA") == 1.0
    assert text_similarity("Nike", "JUST DO IT NIKE") == 1.0
    assert text_similarity("Rafael Nadal", "NADAL") >= 0.75  # surname on a jersey
    assert text_similarity("Pepsi", "COCA COLA") < 0.4
    assert text_similarity("Coca-Cola", "") == 0.0


def test_printed_name_is_found_where_it_was_drawn(banner: tuple[MediaBundle, Box]) -> None:
    media, drawn = banner
    [region] = image_segmentation(media, "Coca-Cola", "ORG")
    assert isinstance(region, ImageRegion), region
    assert region.box.iou(drawn) > 0.5, (region.box, drawn)
    assert region.source.startswith("ocr")
    assert region.mask is not None and region.mask.area > 0
    mask_box = region.mask.bounding_box()
    assert mask_box is not None
    assert mask_box.x1 >= region.box.x1 - 1 and mask_box.x2 <= region.box.x2 + 1
    assert mask_box.y1 >= region.box.y1 - 1 and mask_box.y2 <= region.box.y2 + 1


def test_absent_target_gives_no_region(banner: tuple[MediaBundle, Box]) -> None:
    media, _ = banner
    [result] = image_segmentation(media, "Pepsi", "ORG")
    assert isinstance(result, NoRegion)
    assert result.modality == "image" and "Pepsi" in result.reason


def test_describe_image_lists_text_with_position(banner: tuple[MediaBundle, Box]) -> None:
    media, _ = banner
    text = describe_image(media.image)
    assert "Text in image: 'COCA COLA' (top-left)" in text
    assert len(text.splitlines()) <= 12


def test_person_target_gets_the_face() -> None:
    if FaceDetector().backend == "none":
        pytest.skip("no face detector: pip install --no-deps facenet-pytorch (or OpenCV 4.x with Haar cascades)")
    media = MediaBundle(image=load_image(skimage.data.astronaut()))
    [region] = image_segmentation(media, "Eileen Collins", "PER")
    assert isinstance(region, ImageRegion), region
    assert region.box.iou(ASTRONAUT_FACE) > 0.5, region.box
    assert region.source.startswith("face")
    # An organisation is not looked for among faces: no text in the photo names it.
    [none] = image_segmentation(media, "NASA", "ORG")
    assert isinstance(none, NoRegion)


def test_grabcut_mask_stays_in_box_and_separates_the_cat() -> None:
    image = load_image(skimage.data.chelsea())  # 451x300 cat, roughly centered
    box = Box(x1=60, y1=20, x2=400, y2=300)
    [mask] = GrabCutRefiner().refine(image, [box])
    array = mask.to_array()
    assert array.shape == (image.height, image.width)
    outside = array.copy()
    outside[20:300, 60:400] = False
    assert not outside.any()
    fraction = array.sum() / box.area
    assert 0.2 < fraction < 0.98, fraction  # a real cut-out, not the box and not empty


def test_missing_image_is_a_media_error() -> None:
    tool = make_image_segmentation()
    with pytest.raises(MediaError, match="image"):
        tool(MediaBundle(), "anything")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((10, 10, 3), dtype=np.uint8),  # 10x10 px
        np.full((12, 40, 3), 200, dtype=np.uint8),  # 12x40 px
        np.random.default_rng(0).random((10, 10)),  # a 2-D float array in [0, 1]
        np.random.default_rng(1).random((12, 40)) * 255.0,  # a 2-D float array in [0, 255]
    ],
    ids=["10x10", "12x40", "float-10x10-unit", "float-12x40-255"],
)
def test_tiny_image_gives_no_faces_and_no_region_not_a_crash(array: np.ndarray) -> None:
    """Issue 27: a 10x10 image crashed MTCNN ("torch.cat(): expected a non-empty list of Tensors")."""
    image = load_image(array)
    assert (image.height, image.width) == array.shape[:2] and image.array.dtype == np.uint8
    text = describe_image(image)
    assert "No readable text" in text and "No faces detected" in text, text
    for target, entity_type in (("Rafael Nadal", "PER"), ("a man", None), ("Nike", "ORG")):
        [none] = image_segmentation(MediaBundle(image=image), target, entity_type)
        assert isinstance(none, NoRegion), none
    assert FaceDetector().detect(image) == []


def test_tiny_video_frames_go_through_the_same_detector() -> None:
    from reamo.media import load_video
    from reamo.tools.video import describe_video, video_tracking

    video = load_video(np.zeros((4, 12, 40, 3), dtype=np.uint8), fps=2.0)
    assert "No readable text" in describe_video(video)
    [none] = video_tracking(MediaBundle(video=video), "Rafael Nadal", "PER")
    assert isinstance(none, NoRegion), none
