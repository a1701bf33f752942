"""Stage 2 data: media-caption pairs that align the projector's output with the LLM's text space.

As in LLaVA's pretraining stage, the user turn is the medium's placeholder plus a short request, and the target is
the caption; encoder and LLM stay frozen, only the projector learns. Pairs come from real media: the shared images
and scikit-image photos with hand-written captions, and spoken sentences (their transcript is the caption).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from reamo.files import atomic_path
from reamo.datasets import Example
from reamo.tuning.data import InstructionExample, refuse_eval_split

REQUESTS = {
    "image": ["Describe the image briefly.", "What does the picture show?", "Give a short caption for this image."],
    "video": ["Describe the video briefly.", "What happens in this clip?", "Give a short caption for this video."],
    "audio": ["What is said in the audio?", "Transcribe the speech.", "Write down what the speaker says."],
}
# Real photos with captions written for them (scikit-image's data set and the shared images).
SKIMAGE_CAPTIONS = {
    "astronaut": "Astronaut Eileen Collins in an orange flight suit in front of an American flag.",
    "coffee": "A cup of coffee on a saucer with a spoon, on a wooden table.",
    "chelsea": "A tabby cat named Chelsea looking to the side.",
    "rocket": "A rocket on the launch pad under a blue sky.",
    "camera": "A black and white photo of a man holding a camera on a tripod.",
    "text": "White handwritten text on a black background.",
}
SHARED_IMAGE_CAPTIONS = {
    "truck.jpg": "A truck parked on a street.",
    "groceries.jpg": "Groceries laid out on a table.",
    "cars.jpg": "Cars on a road.",
}


class CaptionPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: str
    path: str
    caption: str
    source: str = "captions"


def caption_examples(pairs: Sequence[CaptionPair], split: str, seed: int = 0, stage: int = 2
                     ) -> list[InstructionExample]:
    """Placeholder + request -> caption; the placeholder becomes projected encoder features in training."""
    refuse_eval_split(split)
    rng = random.Random(f"captions-{seed}")
    out = []
    for index, pair in enumerate(pairs):
        if pair.modality not in REQUESTS:
            raise ValueError(f"caption pair {index}: unknown modality {pair.modality!r}; use image, video or audio")
        request = rng.choice(REQUESTS[pair.modality])
        messages = [
            {"role": "user", "content": [{"type": pair.modality}, {"type": "text", "text": request}]},
            {"role": "assistant", "content": pair.caption},
        ]
        out.append(InstructionExample(id=f"{pair.source}:{index}", messages=messages, media={pair.modality: pair.path},
                                      task=["caption"], source=pair.source, split=split, stage=stage))
    return out


def photo_pairs(cache_dir: str | os.PathLike[str], shared_images: str | os.PathLike[str] | None = None
                ) -> list[CaptionPair]:
    """scikit-image photos (written once as PNG into `cache_dir`) and the shared images, with their captions."""
    import skimage.data
    from PIL import Image

    folder = Path(cache_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for name, caption in SKIMAGE_CAPTIONS.items():
        path = folder / f"skimage_{name}.png"
        if not path.is_file():
            array = getattr(skimage.data, name)()
            with atomic_path(path, suffix=".png") as partial:
                Image.fromarray(array).convert("RGB").save(partial)
        pairs.append(CaptionPair(modality="image", path=str(path), caption=caption, source="skimage"))
    if shared_images is not None:
        for name, caption in SHARED_IMAGE_CAPTIONS.items():
            path = Path(shared_images) / name
            if path.is_file():
                pairs.append(CaptionPair(modality="image", path=str(path), caption=caption, source="shared"))
    return pairs


def speech_pairs(examples: Sequence[Example], cache_dir: str | os.PathLike[str] | None = None, seed: int = 0
                 ) -> list[CaptionPair]:
    """Spoken dataset sentences; the caption is what was said."""
    from reamo.tuning.speech import speech_clips

    return [CaptionPair(modality="audio", path=clip.path, caption=clip.text, source="speech")
            for clip in speech_clips(examples, cache_dir, seed)]
