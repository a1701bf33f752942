"""The one atomic-write helper: a reader sees the old file or the whole new one, and nothing is left behind."""

from pathlib import Path

import pytest

from reamo.files import atomic_folder, atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.json"
    write_atomic(target, "first")
    write_atomic(target, b"second", fsync=True)
    assert target.read_text(encoding="utf-8") == "second"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "picture.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, suffix=".png") as temporary:
            assert temporary.parent == target.parent and temporary.suffix == ".png"
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picture.png"]


def test_atomic_folder_swaps_in_the_whole_new_folder_or_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "a.json").write_text("1")
    with atomic_folder(target) as staging:
        (staging / "b.json").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.json"]  # replaced as a whole, nothing of the old left
    (tmp_path / "plain").mkdir()
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    (tmp_path / "plain").rmdir()
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_folder(target) as staging:
            (staging / "c.json").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["b.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or backup folder left


def test_callers_use_the_helper(tmp_path: Path) -> None:
    """jsonlines written by the datasets module go through it (no stray temporary, complete content)."""
    from reamo.datasets import write_jsonl
    from reamo.schema import Entity

    count = write_jsonl([Entity(text="Paris", type="LOC")] * 3, tmp_path / "e.jsonl")
    assert count == 3
    assert len((tmp_path / "e.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["e.jsonl"]


def test_written_files_get_the_mode_of_any_new_file_not_a_private_one(tmp_path: Path) -> None:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    write_atomic(tmp_path / "report.md", "# scores")
    (tmp_path / "plain.md").write_text("# scores")
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o666 & ~mask


def test_first_use_copy_of_the_llm_is_complete_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tiny_llm_dir: Path) -> None:
    """The dequantized LLM the default loads goes through the helper: a failed first use leaves nothing a later
    run would mistake for the model, a good one a loadable folder (here a plain folder stands in for the GGUF)."""
    from contextlib import contextmanager, nullcontext

    from transformers import AutoModelForCausalLM

    from reamo.model.embedded_default import _dequantized_copy

    monkeypatch.setenv("REAMO_CACHE_DIR", str(tmp_path / "cache"))

    @contextmanager
    def vanished():
        raise FileNotFoundError("the GGUF package is gone")
        yield  # pragma: no cover

    with pytest.raises(FileNotFoundError, match="GGUF package"):
        _dequantized_copy("llm", vanished, "a second")
    assert list((tmp_path / "cache").iterdir()) == []
    folder = _dequantized_copy("llm", lambda: nullcontext((tiny_llm_dir, None)), "a second", eos_token="</s>")
    assert folder == tmp_path / "cache" / "llm" and (folder / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(str(folder)).config.vocab_size > 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["llm"]
