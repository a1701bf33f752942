"""Ships a tuned LoRA adapter: the folder `Agent.from_pretrained("default")` loads, at half the size.

A tuning run writes its adapter in float32 (what it trained); shipped weights are cast to bfloat16, which halves
the file with no visible change to the model (peft loads them back into the float32 LoRA layers; on the default's
logits the largest difference seen was 0.0035 of values up to ~31). The config's base-model path (this machine's
cache folder) is replaced by the default's name, since the shipped adapter is always put on the embedded default.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reamo.errors import CheckpointNotFoundError
from reamo.files import atomic_folder
from reamo.model.modeling_reamo import ADAPTER_CONFIG, ADAPTER_DIR

ADAPTER_WEIGHTS = "adapter_model.safetensors"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def adapter_folder(folder: str | os.PathLike[str]) -> Path:
    """The LoRA adapter folder of a tuned model folder (its `adapter/`), or `folder` itself if it is one."""
    source = Path(folder).expanduser()
    source = source / ADAPTER_DIR if (source / ADAPTER_DIR).is_dir() else source
    if not (source / ADAPTER_WEIGHTS).is_file() or not (source / ADAPTER_CONFIG).is_file():
        raise CheckpointNotFoundError(
            f"no LoRA adapter in {source} (expected {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}); pass the folder a "
            "tuning run wrote, e.g. runs/default_smollm2/final"
        )
    return source


def export_adapter(model_folder: str | os.PathLike[str], target: str | os.PathLike[str],
                   dtype: str = "bfloat16", base_name: str = "smollm2-135m-instruct") -> Path:
    """Copy `<model_folder>/adapter` (a `ReamoModel.save_pretrained` folder, e.g. `runs/.../final`) into `target`,
    weights cast to `dtype`, atomically: `target` is either the old adapter or the complete new one."""
    source = adapter_folder(model_folder)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    out = Path(target).expanduser()
    with atomic_folder(out) as staging:
        weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in load_file(str(source / ADAPTER_WEIGHTS)).items()}
        save_file(weights, str(staging / ADAPTER_WEIGHTS))
        config = json.loads((source / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base_name
        if isinstance(config.get("target_modules"), list):  # peft writes a set: sort it so re-exports diff cleanly
            config["target_modules"] = sorted(config["target_modules"])
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
