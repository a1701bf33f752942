"""Named full-size configurations (`reamo extract --preset reamo-7b-4bit`) and a check of the files they need.

Nothing can be downloaded at run time, so a preset is only useful with its files on disk. `check_files` lists
every missing file with the place it goes (and the flag that points elsewhere) before any loading starts, so a
user learns about all of them at once instead of one traceback per file.

Presets follow the Reamo paper: Vicuna-7B v1.5 + ImageBind-huge, an mlp2x_gelu projector per modality and LoRA
r=128 / alpha=256 on every linear layer (the LLaVA-1.5 LoRA recipe); `reamo-7b-4bit` loads the LLM in NF4 with
double quantisation (QLoRA). `tiny` has the same structure at test size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reamo.errors import CheckpointNotFoundError, ConfigError
from reamo.model import LoraSettings, ReamoConfig
from reamo.files import cache_root
from reamo.model.imagebind_encoder import ImageBindEncoderConfig

Component = Literal["llm", "imagebind", "sam2"]

VICUNA_7B_HUB_ID = "lmsys/vicuna-7b-v1.5"
# Vicuna-7B v1.5 = LLaMA-2-7B architecture; used by reamo.memory when the LLM's config.json is not on disk
VICUNA_7B_ARCHITECTURE = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
# the tiny preset's LLM (2 layers; widths multiples of 64, which bitsandbytes' CPU 4-bit kernels need): what
# `reamo memory --measure --preset tiny` builds with random weights
TINY_ARCHITECTURE = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
FLAGS: dict[Component, str] = {"llm": "--llm", "imagebind": "--imagebind-checkpoint", "sam2": "--sam2-checkpoint"}


class Preset(BaseModel):
    """A named configuration: the model config plus where its files live by default."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    config: ReamoConfig
    llm_folder: str = Field(description="default local folder of the LLM (hub-style: config.json, tokenizer, shards)")
    llm_hub_id: str | None = Field(default=None, description="hub id to pass as --llm on a machine with hub access")
    llm_architecture: dict[str, int | str | bool] | None = Field(
        default=None, description="transformers config of the LLM, for memory estimates without its files"
    )
    sam2_checkpoint: str | None = Field(default=None, description="SAM 2 checkpoint for the grounding tools")
    sam2_config: str | None = Field(default=None, description="SAM 2 Hydra config matching the checkpoint")


class MissingFile(BaseModel):
    """One file a preset needs that is not on disk: what it is, where it goes, which flag points elsewhere."""

    model_config = ConfigDict(extra="forbid")

    component: Component
    path: str
    what: str
    flag: str

    def __str__(self) -> str:
        return f"{self.path}  ({self.what}; or point {self.flag} at it)"


def _cache(*parts: str) -> Path:
    return cache_root().joinpath(*parts)


def _reamo_7b(name: str, four_bit: bool) -> Preset:
    config = ReamoConfig(
        llm=str(_cache("vicuna-7b-v1.5")),
        chat_template="vicuna_v1.1",
        encoder=ImageBindEncoderConfig(checkpoint=str(_cache("imagebind", "imagebind_huge.pth"))),
        modalities=["image", "video", "audio"],
        projector_type="mlp2x_gelu",
        tokens_per_input=1,  # ImageBind gives one pooled embedding per input; one LLM token each
        lora=LoraSettings(r=128, alpha=256, dropout=0.05, target_modules="all-linear"),
        load_in_4bit=four_bit,
        dtype="bfloat16" if four_bit else "float16",
    )
    return Preset(
        name=name,
        description=(
            "Vicuna-7B v1.5 " + ("in 4-bit NF4 (double quantisation, bitsandbytes, CUDA)" if four_bit else "in float16")
            + " + ImageBind-huge + mlp2x_gelu projectors + LoRA r128/alpha256 (the Reamo paper's model)"
        ),
        config=config,
        llm_folder=config.llm,
        llm_hub_id=VICUNA_7B_HUB_ID,
        llm_architecture=VICUNA_7B_ARCHITECTURE,
        sam2_checkpoint=str(_cache("sam2", "sam2.1_hiera_large.pt")),
        sam2_config="configs/sam2.1/sam2.1_hiera_l.yaml",
    )


def _tiny() -> Preset:
    config = ReamoConfig(
        llm=str(_cache("tiny-llama")),
        chat_template="vicuna_v1.1",
        encoder=ImageBindEncoderConfig.tiny(),  # checkpoint None = random weights
        projector_type="mlp2x_gelu",
        tokens_per_input=1,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        dtype="float32",
    )
    return Preset(name="tiny", description="2-layer LLaMA + tiny random ImageBind, for tests", config=config,
                  llm_folder=config.llm, llm_architecture=TINY_ARCHITECTURE)


PRESET_NAMES = ("reamo-7b", "reamo-7b-4bit", "tiny")


def get_preset(name: str) -> Preset:
    """The preset with its default paths (resolved now, so $REAMO_CACHE_DIR is honoured)."""
    if name == "reamo-7b":
        return _reamo_7b(name, four_bit=False)
    if name == "reamo-7b-4bit":
        return _reamo_7b(name, four_bit=True)
    if name == "tiny":
        return _tiny()
    raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")


def _is_hub_id(value: str) -> bool:
    """`org/name` that is not a path on this machine (the LLM is then fetched by transformers, not checked here)."""
    if value.startswith(("/", ".", "~")) or Path(value).expanduser().exists():
        return False
    return value.count("/") == 1 and all(value.split("/"))


def resolve_preset(
    name: str | Preset,
    llm_path: str | os.PathLike | None = None,
    imagebind_checkpoint: str | os.PathLike | None = None,
    sam2_checkpoint: str | os.PathLike | None = None,
) -> Preset:
    """The preset with user-given paths (local folders/files or an LLM hub id) replacing the defaults."""
    preset = get_preset(name) if isinstance(name, str) else name
    config = preset.config
    update: dict[str, object] = {}
    if llm_path is not None:
        llm = str(llm_path)
        update["llm"] = llm if _is_hub_id(llm) else str(Path(llm).expanduser())
    if imagebind_checkpoint is not None:
        if config.encoder is None:
            raise ConfigError(f"preset {preset.name!r} has no ImageBind encoder; drop --imagebind-checkpoint")
        update["encoder"] = config.encoder.model_copy(
            update={"checkpoint": str(Path(imagebind_checkpoint).expanduser())}
        )
    if update:
        config = config.model_copy(update=update)
    sam2 = str(Path(sam2_checkpoint).expanduser()) if sam2_checkpoint is not None else preset.sam2_checkpoint
    return preset.model_copy(update={"config": config, "sam2_checkpoint": sam2})


def load_preset(
    name: str,
    llm_path: str | os.PathLike | None = None,
    imagebind_checkpoint: str | os.PathLike | None = None,
    sam2_checkpoint: str | os.PathLike | None = None,
    check: bool = True,
) -> ReamoConfig:
    """The preset's `ReamoConfig` (for `ReamoModel.from_config`); with `check`, refuse early listing missing files."""
    preset = resolve_preset(name, llm_path, imagebind_checkpoint, sam2_checkpoint)
    if check:
        require_files(preset)
    return preset.config


# ---------------------------------------------------------------------------------------------------------------
# File checks
# ---------------------------------------------------------------------------------------------------------------


def _llm_missing(folder: Path) -> list[MissingFile]:
    """config.json, tokenizer_config.json, tokenizer.model (or tokenizer.json) and every weight shard."""

    def missing(path: Path, what: str) -> MissingFile:
        return MissingFile(component="llm", path=str(path), what=what, flag=FLAGS["llm"])

    found: list[MissingFile] = []
    if not (folder / "config.json").is_file():
        found.append(missing(folder / "config.json", "LLM architecture config"))
    if not (folder / "tokenizer_config.json").is_file():
        found.append(missing(folder / "tokenizer_config.json", "tokenizer settings"))
    if not ((folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file()):
        found.append(missing(folder / "tokenizer.model", "SentencePiece tokenizer (or tokenizer.json)"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as error:
            raise ConfigError(f"{index} is not a safetensors index ({error}); download it again") from error
        found += [missing(folder / s, "LLM weight shard") for s in shards if not (folder / s).is_file()]
    elif not (folder / "model.safetensors").is_file() and not any(folder.glob("*.safetensors")):
        found.append(missing(folder / "model-0000x-of-0000y.safetensors",
                             "LLM weights: model.safetensors.index.json + every shard it lists"))
    return found


def check_files(preset: str | Preset, paths: dict[Component, str | os.PathLike | None] | None = None,
                tools: bool = True) -> list[MissingFile]:
    """Every file the preset needs that is missing (empty list = ready). `paths` overrides llm/imagebind/sam2.

    An LLM given as a hub id is not checked (transformers fetches it where the hub is reachable). `tools=False`
    skips the SAM 2 checkpoint (only the grounding tools need it, not the model).
    """
    preset = _with_paths(preset, paths)
    config = preset.config
    found: list[MissingFile] = []
    if not _is_hub_id(config.llm):
        found += _llm_missing(Path(config.llm).expanduser())
    if config.encoder is not None and config.encoder.checkpoint is not None:
        checkpoint = Path(config.encoder.checkpoint).expanduser()
        if not checkpoint.is_file():
            found.append(MissingFile(component="imagebind", path=str(checkpoint),
                                     what="ImageBind-huge weights", flag=FLAGS["imagebind"]))
    if tools and preset.sam2_checkpoint is not None and not Path(preset.sam2_checkpoint).expanduser().is_file():
        found.append(MissingFile(component="sam2", path=preset.sam2_checkpoint,
                                 what=f"SAM 2.1 weights (config {preset.sam2_config})", flag=FLAGS["sam2"]))
    return found


def _with_paths(preset: str | Preset, paths: dict[Component, str | os.PathLike | None] | None) -> Preset:
    paths = paths or {}
    unknown = set(paths) - {"llm", "imagebind", "sam2"}
    if unknown:
        raise ConfigError(f"unknown component(s) {sorted(unknown)}; paths keys are llm, imagebind, sam2")
    if isinstance(preset, Preset) and not paths:
        return preset
    return resolve_preset(preset, paths.get("llm"), paths.get("imagebind"), paths.get("sam2"))


def missing_files_message(preset: Preset, missing: list[MissingFile]) -> str:
    lines = [(f"preset {preset.name!r} needs {len(missing)} file(s) that are not on disk (nothing is downloaded "
              "at run time; copy them from a machine with internet access):")]
    lines += [f"  - {m}" for m in missing]
    if preset.llm_hub_id and any(m.component == "llm" for m in missing):
        lines.append(f"  the LLM is {preset.llm_hub_id} on the Hugging Face hub (or pass --llm {preset.llm_hub_id} "
                     "where the hub is reachable)")
    return "\n".join(lines)


def require_files(preset: str | Preset, paths: dict[Component, str | os.PathLike | None] | None = None,
                  tools: bool = True) -> Preset:
    """`check_files`, raising one `CheckpointNotFoundError` that lists every missing file and where it goes."""
    preset = _with_paths(preset, paths)
    missing = check_files(preset, tools=tools)
    if missing:
        raise CheckpointNotFoundError(missing_files_message(preset, missing))
    return preset
    return preset


def agent_from_preset(
    name: str,
    llm_path: str | os.PathLike | None = None,
    imagebind_checkpoint: str | os.PathLike | None = None,
    sam2_checkpoint: str | os.PathLike | None = None,
    context: int = 2048,
    available_bytes: int | None = None,
    **settings: object,
):
    """What `reamo extract --preset NAME` runs: check files, print the memory estimate, refuse if it won't fit, load.

    Module-level, so `functools.partial(agent_from_preset, "reamo-7b-4bit", llm_path=...)` is a picklable agent
    factory for `reamo.corpus.extract_corpus`.
    """
    import logging

    from reamo.agent import Agent, AgentSettings
    from reamo.memory import check_fits, estimate
    from reamo.model import ReamoModel

    preset = require_files(resolve_preset(name, llm_path, imagebind_checkpoint, sam2_checkpoint))
    logger = logging.getLogger(__name__)
    llm = Path(preset.config.llm).expanduser()
    if (llm / "config.json").is_file() or preset.config.llm == preset.llm_hub_id:
        architecture = None if (llm / "config.json").is_file() else preset.llm_architecture
        needed = estimate(preset.config, context=context, architecture=architecture)
        logger.info("%s", needed.describe())
        check_fits(needed, available_bytes)
    else:
        logger.warning("no memory check: %s is a hub id whose config.json is not on disk", preset.config.llm)
    return Agent(ReamoModel.from_config(preset.config), settings=AgentSettings(**settings))
