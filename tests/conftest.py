"""Shared fixtures: tiny random-weight models built from configs (no download), paths to shared data.

Datasets (GMNER / MNRE / M2E2 and the sample media) are not redistributed with the code. A test that needs them says
so, with `@pytest.mark.needs_data`, the `shared_data` fixture or `require_data(...)`: without them it is skipped with
NEEDS_DATA (so `python -m pytest` passes in any clone), and with REAMO_REQUIRE_DATA=1 (CI) a missing dataset is a
failure instead, so nothing is skipped silently where the data should be. Location: $REAMO_DATA_DIR, else
../shared/data beside the repository (as `reamo.datasets.data_root`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRE_DATA_ENV = "REAMO_REQUIRE_DATA"
NEEDS_DATA = "needs the GMNER/MNRE/M2E2 datasets: put them in ../shared/data or set REAMO_DATA_DIR (see README)"
NEEDS_MEDIA = "needs the shared sample photos and videos: put them in ../shared/data/media or set REAMO_DATA_DIR (see README)"


def data_dir() -> Path:
    """$REAMO_DATA_DIR if set, else ../shared/data beside the repository root (where the readers look)."""
    env = os.environ.get("REAMO_DATA_DIR")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


SHARED_DATA = data_dir()


def require_data(*parts: str) -> Path:
    """The data folder (with gmner/, mnre/ and m2e2/), or the path `parts` inside it (e.g. "media", "images");
    the test is skipped when it is missing, or fails under REAMO_REQUIRE_DATA=1."""
    root = data_dir()
    wanted = [root.joinpath(*parts)] if parts else [root / name for name in ("gmner", "mnre", "m2e2")]
    missing = [str(path) for path in wanted if not path.exists()]
    if missing:
        reason = NEEDS_MEDIA if parts[:1] == ("media",) else NEEDS_DATA
        if os.environ.get(REQUIRE_DATA_ENV, "") not in ("", "0"):
            pytest.fail(f"missing {', '.join(missing)} with {REQUIRE_DATA_ENV}=1: {reason}", pytrace=False)
        pytest.skip(reason)
    return root.joinpath(*parts)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"needs_data(*parts): {NEEDS_DATA} (or, with 'media', the sample media); "
                                       f"skipped without them, failed with {REQUIRE_DATA_ENV}=1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """`needs_data` is checked before any fixture runs (module fixtures read the datasets)."""
    for marker in item.iter_markers("needs_data"):
        require_data(*marker.args)


@pytest.fixture(scope="session", autouse=True)
def _own_config_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests do not read the user's own settings (reamo calibrate-* writes them): an empty config folder."""
    if "REAMO_CONFIG_DIR" not in os.environ:
        os.environ["REAMO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("reamo-config"))


CORPUS = [
    "Rafael Nadal gets engaged to Mery Perello in Mallorca.",
    "USER: ASSISTANT: Entities: Relations: Events: None PER ORG LOC OTHER",
    "<Module>ImageSegmentation</Module><Instruction>Rafael Nadal</Instruction>",
    "A chat between a curious user and an artificial intelligence assistant.",
]


def build_tiny_llm(folder: Path, hidden_size: int = 32) -> Path:
    """A 2-layer LLaMA with a byte-level BPE tokenizer trained on a few sentences, saved like a hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llm(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data folder; the test is skipped (or failed under REAMO_REQUIRE_DATA=1) without it."""
    return require_data()


def constant_head(hidden: int, labels: list[str], logits: list[float], answer_start: str = "Events:") -> "Any":
    """A decision head that ignores the LLM's state and gives `labels` ("None" first) the `logits`: which head
    decides, with which margin, is then plain to see."""
    import torch

    from reamo.model.decision_heads import DecisionHead, DecisionHeadConfig

    head = DecisionHead(DecisionHeadConfig(layer=1, labels=labels, hidden_size=hidden,
                                           answer_start=answer_start)).eval()
    with torch.no_grad():
        head.classifier.weight.zero_()
        head.classifier.bias.copy_(torch.tensor(logits))
    return head


@pytest.fixture
def tiny_model_folder(tmp_path: Path, tiny_llm_dir: Path) -> Path:
    """A saved text-only tiny model folder: what `reamo fit-*-head F --model F` fits a head for and writes it into."""
    from reamo.model import ReamoConfig, ReamoModel

    return ReamoModel.from_config(ReamoConfig(llm=str(tiny_llm_dir), encoder=None, modalities=[])).save_pretrained(
        tmp_path / "tuned")


def run_cli(*args: str) -> "Any":
    """`reamo ARGS` in-process (typer's CliRunner): its exit code and output."""
    from typer.testing import CliRunner

    from reamo.cli import app

    return CliRunner().invoke(app, list(args))
