"""SAM 2 adapters with a randomly initialised SAM 2.1 tiny (256 px input) saved to and loaded from a checkpoint.

Random weights make meaningless masks, so these tests check the plumbing: prompts in, masks of the image's shape
out, one mask per box, one track frame per sampled frame, and the errors a user sees.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reamo.errors import CheckpointNotFoundError
from reamo.media import LoadedImage, LoadedVideo
from reamo.schema import Box

pytest.importorskip("sam2", reason="the SAM 2 backend is optional: pip install 'reamo[sam2]'")

from reamo.tools.sam2_backend import (
    CHECKPOINT_ENV,
    DEFAULT_CONFIG,
    Sam2MaskRefiner,
    Sam2VideoTracker,
    resolve_checkpoint,
)

# A 256-pixel input keeps a CPU call around a second; the memory attention's RoPE grid must follow (256/16).
SMALL = (
    "++model.image_size=256",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2(DEFAULT_CONFIG, ckpt_path=None, device="cpu", hydra_overrides_extra=list(SMALL))
    path = tmp_path_factory.mktemp("sam2") / "random_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def image() -> LoadedImage:
    import skimage.data

    return LoadedImage(name="astronaut", array=np.ascontiguousarray(skimage.data.astronaut()[::2, ::2]))


def test_missing_checkpoint_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError) as error:
        Sam2MaskRefiner()
    message = str(error.value)
    assert "sam2.1_hiera_tiny.pt" in message and ".cache/reamo/sam2" in message
    assert CHECKPOINT_ENV in message and "checkpoint=" in message
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "elsewhere.pt"))
    with pytest.raises(CheckpointNotFoundError, match="elsewhere.pt"):
        resolve_checkpoint(None)


def test_box_prompts_give_image_sized_masks(checkpoint: Path, image: LoadedImage) -> None:
    refiner = Sam2MaskRefiner(checkpoint, device="cpu", hydra_overrides=SMALL)
    boxes = [Box(x1=80, y1=20, x2=140, y2=90), Box(x1=0, y1=100, x2=200, y2=256)]
    masks = refiner.refine(image, boxes)
    assert len(masks) == 2
    for mask in masks:
        assert (mask.height, mask.width) == (image.height, image.width)
    [single] = refiner.refine(image, boxes[:1])
    assert (single.height, single.width) == (image.height, image.width)
    assert single.to_array().tolist() == masks[0].to_array().tolist()  # batching does not change a box's mask


def test_point_prompt(checkpoint: Path, image: LoadedImage) -> None:
    refiner = Sam2MaskRefiner(checkpoint, device="cpu", hydra_overrides=SMALL)
    [mask] = refiner.segment(image, points=[[110, 55]], point_labels=[1])
    assert (mask.height, mask.width) == (image.height, image.width)


def test_checkpoint_for_another_config_is_refused(tmp_path: Path, image: LoadedImage) -> None:
    import torch

    path = tmp_path / "wrong.pt"
    torch.save({"model": {"not_a_sam2_weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointNotFoundError, match="does not fit"):
        Sam2MaskRefiner(path, device="cpu", hydra_overrides=SMALL).refine(image, [Box(x1=0, y1=0, x2=10, y2=10)])


def test_video_tracker_returns_one_frame_per_sampled_frame(checkpoint: Path, image: LoadedImage) -> None:
    frames = np.stack([np.roll(image.array, 8 * i, axis=1) for i in range(3)])
    video = LoadedVideo(name="roll", frames=frames, timestamps=[0.0, 0.5, 1.0], frame_indices=[0, 15, 30], fps=30.0,
                        duration=1.5)
    track = Sam2VideoTracker(checkpoint, device="cpu", hydra_overrides=SMALL).track(
        video, 1, Box(x1=80, y1=20, x2=140, y2=90)
    )
    assert track.source == "sam2"
    # Random weights can give an empty mask on a frame, which the tracker rightly drops.
    assert 1 <= len(track.frames) <= 3
    assert {f.frame_index for f in track.frames} <= {0, 15, 30}
    for frame in track.frames:
        assert frame.mask is not None and (frame.mask.height, frame.mask.width) == (image.height, image.width)
        assert frame.time == {0: 0.0, 15: 0.5, 30: 1.0}[frame.frame_index]
        assert frame.box == frame.mask.bounding_box()
