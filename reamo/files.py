"""Where Reamo keeps files on a user's machine, and writing a file so that no reader ever sees half of it: the one
helper for each job, used by every module (model caches, Whisper, ImageBind, tuning data; every writer).

The data goes to a temporary name in the target's own folder (same file system, so the rename is atomic), then
`os.replace` puts it in place; on any error the temporary file is removed and the old file, if any, is untouched.
A killed run therefore leaves either the previous file or the complete new one, never a truncated one.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """REAMO_CACHE_DIR if set, else the platform's user cache folder (e.g. ~/.cache/reamo): dequantized models,
    converted Whisper, ImageBind checkpoints, synthesized speech."""
    root = os.environ.get("REAMO_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("reamo"))


def user_config_dir() -> Path:
    """REAMO_CONFIG_DIR if set, else the platform's user config folder (e.g. ~/.config/reamo): calibrated settings."""
    root = os.environ.get("REAMO_CONFIG_DIR")
    if root:
        return Path(root).expanduser()
    from platformdirs import user_config_dir as platform_config_dir

    return Path(platform_config_dir("reamo"))


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `path` for writers that want a file name (Pillow, pyarrow, a subprocess).

    Whatever is written there becomes `path` when the block ends without error; `suffix` keeps the extension a
    writer may infer the format from (e.g. ".png")."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp makes the file private (0600); the result gets the mode any new file would get
        os.chmod(temporary, 0o666 & ~_process_umask())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder next to `path` for writers of several files (a model folder, an adapter).

    When the block ends without error it replaces `path` (the old folder, if any, is moved aside first and removed
    after): a reader sees the old folder or the complete new one. On an error the temporary folder is removed and
    `path` is untouched."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_process_umask())  # mkdtemp's folder is private; the result is a normal folder
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        if target.exists():
            os.replace(target, backup)
        os.replace(staging, target)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@functools.lru_cache(maxsize=1)
def _process_umask() -> int:
    """The process's umask, read once (reading it means setting it, which must not race later file creation)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str, fsync: bool = False) -> None:
    """Write `data` (text as UTF-8) to `path` atomically; `fsync` also flushes it to disk before the rename, for
    files a crash must not lose (resumable predictions)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as temporary:
        with temporary.open("wb") as handle:
            handle.write(payload)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
