"""ImageBind as Reamo's image / video / audio encoder, using the real ImageBind code from `imagebind-unofficial`.

ImageBind maps every modality into one embedding space, so one projector per modality can feed the LLM from the
same kind of vector (the design Reamo and NExT-GPT share). Weights cannot be downloaded here: the user points
`checkpoint` at `imagebind_huge.pth`; tests build the same architecture at a tiny size with random weights.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from reamo.errors import CheckpointNotFoundError, MissingDependencyError
from reamo.media import LoadedAudio, LoadedImage, LoadedVideo

logger = logging.getLogger(__name__)

EncodedModality = Literal["image", "video", "audio"]
USED_MODALITY_KEYS = ("vision", "audio")  # ImageBind's names for the towers Reamo feeds the LLM from
IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AUDIO_SAMPLE_RATE = 16_000
AUDIO_CLIP_SECONDS = 2.0
AUDIO_CLIPS = 3
AUDIO_MEL_BINS = 128
AUDIO_TARGET_LEN = 204
AUDIO_MEAN, AUDIO_STD = -4.268, 9.138  # ImageBind's (and AST's) log-mel normalisation
VIDEO_FRAMES_PER_CLIP = 2
VIDEO_CLIPS = 5


def default_checkpoint_path() -> Path:
    from reamo.files import cache_root

    return cache_root() / "imagebind" / "imagebind_huge.pth"


class ImageBindEncoderConfig(BaseModel):
    """Architecture sizes (defaults = imagebind_huge) and where its weights are."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None  # None = random weights (tests, memory measurements)
    out_embed_dim: int = 1024
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    text_embed_dim: int = 1024
    text_num_blocks: int = 24
    text_num_heads: int = 16
    # modalities ImageBind has that Reamo does not feed the LLM; their sizes must still match the checkpoint
    depth_embed_dim: int = 384
    depth_num_blocks: int = 12
    depth_num_heads: int = 8
    thermal_embed_dim: int = 768
    thermal_num_blocks: int = 12
    thermal_num_heads: int = 12
    imu_embed_dim: int = 512
    imu_num_blocks: int = 6
    imu_num_heads: int = 8

    @classmethod
    def tiny(cls) -> "ImageBindEncoderConfig":
        """A few-layer ImageBind for tests: same code paths, random weights, seconds on CPU."""
        return cls(
            out_embed_dim=32,
            vision_embed_dim=32,
            vision_num_blocks=1,
            vision_num_heads=2,
            audio_embed_dim=32,
            audio_num_blocks=1,
            audio_num_heads=2,
            text_embed_dim=32,
            text_num_blocks=1,
            text_num_heads=2,
            depth_embed_dim=16, depth_num_blocks=1, depth_num_heads=1,
            thermal_embed_dim=16, thermal_num_blocks=1, thermal_num_heads=1,
            imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=1,
        )


def _import_imagebind_model() -> types.ModuleType:
    """Import `imagebind.models.imagebind_model` without running `imagebind/__init__.py`.

    The package's __init__ imports its data pipeline (torchaudio, pytorchvideo, pkg_resources), which the
    encoder does not use: Reamo preprocesses media itself. Importing the model module alone keeps those out.
    """
    if "imagebind.models.imagebind_model" in sys.modules:
        return sys.modules["imagebind.models.imagebind_model"]
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "ImageBind is not installed; install the encoder extra: pip install 'reamo[imagebind]'"
        )
    if "imagebind" not in sys.modules:
        package = types.ModuleType("imagebind")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["imagebind"] = package
    import imagebind.models.imagebind_model as imagebind_model

    return imagebind_model


class ImageBindEncoder(nn.Module):
    """Frozen ImageBind: `forward(modality, pixel_or_mel)` -> one embedding per input, shape [batch, out_embed_dim]."""

    modality_keys = {"image": "vision", "video": "vision", "audio": "audio"}

    def __init__(self, config: ImageBindEncoderConfig) -> None:
        super().__init__()
        self.config = config
        module = _import_imagebind_model()
        self.model = module.ImageBindModel(**config.model_dump(exclude={"checkpoint"}))
        self._drop_unused_modalities()
        if config.checkpoint is not None:
            self.load_checkpoint(config.checkpoint)
        self.model.eval()
        self.requires_grad_(False)

    @property
    def out_dim(self) -> int:
        return self.config.out_embed_dim

    def _drop_unused_modalities(self) -> None:
        """Keep only the vision and audio towers: text/depth/thermal/IMU are ~480 M parameters Reamo never runs."""
        for table in (self.model.modality_preprocessors, self.model.modality_trunks, self.model.modality_heads,
                      self.model.modality_postprocessors):
            for key in list(table.keys()):
                if key not in USED_MODALITY_KEYS:
                    del table[key]

    def load_checkpoint(self, checkpoint: str) -> None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"ImageBind checkpoint not found: {path}; download imagebind_huge.pth on a machine with internet "
                f"and place it there or at {default_checkpoint_path()} (encoder.checkpoint in the Reamo config)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if k.split(".")[1] in USED_MODALITY_KEYS or "." not in k}
        self.model.load_state_dict(state)
        logger.info("loaded ImageBind weights from %s", path)

    @torch.no_grad()
    def forward(self, modality: EncodedModality, inputs: torch.Tensor) -> torch.Tensor:
        key = self.modality_keys[modality]
        dtype = next(self.model.parameters()).dtype
        return self.model({key: inputs.to(dtype)})[key]

    # -- preprocessing: media records -> the tensors ImageBind was trained on ---------------------------------------
    @staticmethod
    def preprocess_image(image: LoadedImage) -> torch.Tensor:
        """Resize the short side to 224, centre crop, CLIP-normalise: [3, 224, 224]."""
        return _frame_tensor(image.array)

    @staticmethod
    def preprocess_video(video: LoadedVideo) -> torch.Tensor:
        """`VIDEO_CLIPS` clips of 2 frames each, evenly spread: [clips, 3, 2, 224, 224]."""
        count = len(video.frames)
        if count == 0:
            raise ValueError(f"video {video.name} has no frames to encode")
        starts = np.linspace(0, max(count - VIDEO_FRAMES_PER_CLIP, 0), VIDEO_CLIPS).round().astype(int)
        clips = []
        for start in starts:
            frames = [video.frames[min(start + k, count - 1)] for k in range(VIDEO_FRAMES_PER_CLIP)]
            clips.append(torch.stack([_frame_tensor(f) for f in frames], dim=1))
        return torch.stack(clips)

    @staticmethod
    def preprocess_audio(audio: LoadedAudio) -> torch.Tensor:
        """Three 2-second clips as normalised 128-bin log-mel (kaldi fbank recipe): [clips, 1, 128, 204]."""
        from transformers import ASTFeatureExtractor

        extractor = ASTFeatureExtractor(
            num_mel_bins=AUDIO_MEL_BINS, max_length=AUDIO_TARGET_LEN, mean=AUDIO_MEAN, std=AUDIO_STD / 2
        )
        clip_len = int(AUDIO_CLIP_SECONDS * AUDIO_SAMPLE_RATE)
        samples = audio.samples.astype(np.float32)
        if samples.size < clip_len:
            samples = np.pad(samples, (0, clip_len - samples.size))
        starts = np.linspace(0, samples.size - clip_len, AUDIO_CLIPS).round().astype(int)
        clips = [samples[s : s + clip_len] for s in starts]
        features = extractor(clips, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")["input_values"]
        # AST returns [clips, time, mel]; ImageBind wants [clips, 1, mel, time]
        return features.transpose(1, 2).unsqueeze(1).contiguous()


def _frame_tensor(array: np.ndarray) -> torch.Tensor:
    from PIL import Image

    image = Image.fromarray(array)
    width, height = image.size
    scale = IMAGE_SIZE / min(width, height)
    image = image.resize((max(IMAGE_SIZE, round(width * scale)), max(IMAGE_SIZE, round(height * scale))), Image.BICUBIC)
    left = (image.width - IMAGE_SIZE) // 2
    top = (image.height - IMAGE_SIZE) // 2
    image = image.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (tensor - mean) / std
