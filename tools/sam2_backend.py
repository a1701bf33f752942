"""SAM 2 backends: box/point prompts -> masks (`Sam2MaskRefiner`) and box -> video track (`Sam2VideoTracker`).

SAM 2 weights cannot be downloaded at run time here, so the checkpoint is a file the user provides; it is loaded
with `torch.load(weights_only=True)` (no pickled code) into a model built from the package's Hydra config.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reamo.errors import CheckpointNotFoundError, MissingDependencyError
from reamo.media import LoadedImage, LoadedVideo
from reamo.schema import Box, Mask, Track, TrackFrame

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
CHECKPOINT_ENV = "REAMO_SAM2_CHECKPOINT"
DEFAULT_CHECKPOINT_NAME = "sam2.1_hiera_tiny.pt"


def default_checkpoint_path() -> Path:
    """Where the checkpoint is looked for when no argument is given: $REAMO_SAM2_CHECKPOINT or the user cache."""
    from_env = os.environ.get(CHECKPOINT_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "reamo" / "sam2" / DEFAULT_CHECKPOINT_NAME


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint file to load, or a `CheckpointNotFoundError` that says where to put it."""
    path = Path(checkpoint).expanduser() if checkpoint is not None else default_checkpoint_path()
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"SAM 2 checkpoint not found at {path}. Download {DEFAULT_CHECKPOINT_NAME} (or another SAM 2.1 "
            f"checkpoint matching the config) from the SAM 2 release and put it at "
            f"{Path.home() / '.cache' / 'reamo' / 'sam2' / DEFAULT_CHECKPOINT_NAME}, or point to it with the "
            f"`checkpoint=` argument (CLI: --sam2-checkpoint) or the {CHECKPOINT_ENV} environment variable."
        )
    return path


def _require_sam2() -> None:
    try:
        import sam2  # noqa: F401
    except ImportError as error:
        raise MissingDependencyError(
            f"the SAM 2 backend needs the sam2 package ({error}); install it with: pip install 'reamo[sam2]'"
        ) from error


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_model_lock = threading.Lock()
_models: dict[tuple[Any, ...], Any] = {}


def load_sam2(
    checkpoint: str | os.PathLike,
    config: str = DEFAULT_CONFIG,
    device: str = "cpu",
    video: bool = False,
    hydra_overrides: Sequence[str] = (),
) -> Any:
    """Build SAM 2 from `config` and load `checkpoint` into it; cached per process (one copy per file+mode).

    The checkpoint may be the official {"model": state_dict} file or a bare state_dict.
    """
    _require_sam2()
    import torch
    from sam2.build_sam import build_sam2, build_sam2_video_predictor

    path = Path(checkpoint)
    key = (str(path.resolve()), path.stat().st_mtime_ns, config, device, video, tuple(hydra_overrides))
    with _model_lock:
        if key in _models:
            return _models[key]
        build = build_sam2_video_predictor if video else build_sam2
        model = build(config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(hydra_overrides))
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise CheckpointNotFoundError(
                f"{path} does not fit the SAM 2 config {config!r} ({str(error).splitlines()[0]}); pass the config "
                f"that matches the checkpoint with `config=` (e.g. configs/sam2.1/sam2.1_hiera_s.yaml for small)"
            ) from error
        model = model.to(device).eval()
        _models[key] = model
        logger.info("loaded SAM 2 from %s (%s, %s)", path, config, "video" if video else "image")
        return model


class _Sam2Base:
    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        config: str = DEFAULT_CONFIG,
        device: str | None = None,
        hydra_overrides: Sequence[str] = (),
    ) -> None:
        _require_sam2()
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.config = config
        self.device = device or _default_device()
        self.hydra_overrides = tuple(hydra_overrides)
        self._lock = threading.Lock()


class Sam2MaskRefiner(_Sam2Base):
    """`MaskRefiner` with SAM2ImagePredictor: one image embedding, then one mask per box (or per point set)."""

    source = "sam2"

    def _predictor(self) -> Any:
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        model = load_sam2(self.checkpoint, self.config, self.device, False, self.hydra_overrides)
        predictor = SAM2ImagePredictor(model)
        size = int(model.image_size)  # the predictor assumes 1024; keep it right for other input sizes
        predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        return predictor

    def refine(self, image: LoadedImage, boxes: list[Box]) -> list[Mask]:
        return self.segment(image, boxes=boxes)

    def segment(
        self,
        image: LoadedImage,
        boxes: list[Box] | None = None,
        points: Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
    ) -> list[Mask]:
        """Masks for each box (batched), or one mask for the points (label 1 = object, 0 = background)."""
        import torch

        if not boxes and not points:
            return []
        with self._lock, torch.inference_mode():
            predictor = self._predictor()
            predictor.set_image(image.array)
            if boxes:
                masks, _, _ = predictor.predict(
                    box=np.array([b.xyxy for b in boxes], dtype=np.float32), multimask_output=False
                )
                masks = masks.reshape(len(boxes), -1, image.height, image.width)[:, 0]
            else:
                coords = np.asarray(points, dtype=np.float32).reshape(-1, 2)
                labels = np.asarray(point_labels if point_labels is not None else [1] * len(coords), dtype=np.int32)
                masks, _, _ = predictor.predict(point_coords=coords, point_labels=labels, multimask_output=False)
                masks = masks.reshape(-1, image.height, image.width)[:1]
        return [Mask.from_array(np.asarray(m) > 0) for m in masks]


class Sam2VideoTracker(_Sam2Base):
    """`BoxTracker` with SAM 2's video predictor: the box prompt on one frame, masks propagated both ways.

    The predictor reads a folder of JPEG frames, so the sampled frames are written to a temporary folder.
    Frames where the mask is empty (object gone) are left out of the track.
    """

    source = "sam2"

    def track(self, video: LoadedVideo, start: int, box: Box) -> Track:
        import torch
        from PIL import Image

        masks: dict[int, np.ndarray] = {}
        with self._lock, tempfile.TemporaryDirectory(prefix="reamo-sam2-") as folder, torch.inference_mode():
            predictor = load_sam2(self.checkpoint, self.config, self.device, True, self.hydra_overrides)
            for i, frame in enumerate(video.frames):
                Image.fromarray(frame).save(os.path.join(folder, f"{i:05d}.jpg"), quality=95)
            offload = self.device == "cpu"
            state = predictor.init_state(
                video_path=folder, offload_video_to_cpu=offload, offload_state_to_cpu=offload
            )
            predictor.add_new_points_or_box(state, frame_idx=start, obj_id=1, box=np.array(box.xyxy, np.float32))
            for reverse in (False, True):
                if reverse and start == 0:
                    continue
                for index, _ids, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
                    masks[int(index)] = (logits[0, 0] > 0).cpu().numpy()
            predictor.reset_state(state)
        frames = []
        for index in sorted(masks):
            mask = Mask.from_array(masks[index])
            found = mask.bounding_box()
            if found is None:
                continue
            frames.append(
                TrackFrame(
                    frame_index=video.frame_indices[index], time=float(video.timestamps[index]), box=found, mask=mask
                )
            )
        return Track(frames=frames, source=self.source)
