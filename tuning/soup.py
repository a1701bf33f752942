"""Weighted sums of LoRA adapters of one base model (model soups, WiSE-FT interpolation, task arithmetic).

A LoRA adapter adds `scaling * B @ A` to each weight it targets. Averaging the A and B matrices of two adapters does
*not* average what they add (the product of averages is not the average of products); stacking them does:
with A = [c_1 A_1; c_2 A_2; ...], B = [s_1 c_1 B_1, s_2 c_2 B_2, ...] and c_i = sqrt(|w_i| scaling_i), the stacked
adapter of rank sum(r_i) adds exactly sum_i w_i scaling_i B_i @ A_i (s_i the sign of w_i). Loading merges the adapter
into the base weights (`ReamoModel` folds LoRA in for inference), so the larger rank costs file size, not speed.
Used to try soups of the default's tuning passes (model card, "Limits, honestly").
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from reamo.errors import ConfigError
from reamo.files import atomic_folder
from reamo.model.embedded_default import SETTINGS_NAME
from reamo.model.modeling_reamo import ADAPTER_DIR
from reamo.tuning.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DTYPES, adapter_folder

_UNSUPPORTED = ("use_rslora", "use_dora")  # other scalings / decompositions: a stack would not add up exactly
_PATTERNS = ("rank_pattern", "alpha_pattern")


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    for flag in _UNSUPPORTED:
        if config.get(flag):
            raise ConfigError(f"{folder}: {flag} adapters cannot be stacked exactly; soup plain LoRA adapters")
    for pattern in _PATTERNS:
        if config.get(pattern):
            raise ConfigError(f"{folder}: per-module {pattern} is not supported; soup adapters with one rank and alpha")
    weights = load_file(str(folder / ADAPTER_WEIGHTS))
    other = sorted(k for k in weights if ".lora_A." not in k and ".lora_B." not in k)
    if other:
        raise ConfigError(f"{folder}: weights other than LoRA A/B ({other[0]}, ...) cannot be summed; soup LoRA-only "
                          "adapters")
    return config, weights


def soup_adapters(sources: Sequence[tuple[str | os.PathLike[str], float]], target: str | os.PathLike[str],
                  dtype: str = "bfloat16") -> Path:
    """Write to `target` the adapter adding sum_i w_i * (what adapter i adds), for `sources` = [(folder, w_i), ...]
    of adapters on the same base and modules (weights may be negative: task arithmetic). `target` becomes a model
    folder like the first source's (its files copied, except the calibrated margins of `settings.json`, which
    belong to that adapter: calibrate the soup's own), written atomically."""
    if not sources:
        raise ValueError("give at least one adapter to soup")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    folders = [adapter_folder(folder) for folder, _ in sources]
    read = [_read(folder) for folder in folders]
    first_config, first_weights = read[0]
    for folder, (config, weights) in zip(folders[1:], read[1:]):
        if set(weights) != set(first_weights):
            raise ConfigError(f"{folder} targets other modules than {folders[0]}; soup adapters of one tuning recipe")
        if sorted(config.get("target_modules") or []) != sorted(first_config.get("target_modules") or []):
            raise ConfigError(f"{folder} targets other module names than {folders[0]}")
    factors = [math.sqrt(abs(weight) * config["lora_alpha"] / config["r"])
               for (_, weight), (config, _) in zip(sources, read)]
    signs = [1.0 if weight >= 0 else -1.0 for _, weight in sources]
    stacked: dict[str, torch.Tensor] = {}
    for key in first_weights:
        parts = [weights[key].float() * factor * (sign if ".lora_B." in key else 1.0)
                 for (_, weights), factor, sign in zip(read, factors, signs)]
        stacked[key] = torch.cat(parts, dim=0 if ".lora_A." in key else 1).to(DTYPES[dtype]).contiguous()
    rank = sum(config["r"] for config, _ in read)
    config = dict(first_config, r=rank, lora_alpha=rank)  # scaling 1: the factors carry each source's scaling

    first_model = folders[0].parent if folders[0].name == ADAPTER_DIR else None
    out = Path(target).expanduser()
    with atomic_folder(out) as staging:
        if first_model is not None:
            for item in first_model.iterdir():
                if item.is_file() and item.name != SETTINGS_NAME:  # margins belong to the adapter they were set on
                    shutil.copy2(item, staging / item.name)
        adapter = staging / ADAPTER_DIR if first_model is not None else staging
        adapter.mkdir(exist_ok=True)
        save_file(stacked, str(adapter / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (adapter / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out
