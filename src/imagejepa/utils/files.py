"""Files that are either the old or the new version, never half of one; content hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (the folder's own entry table)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Replace ``path`` with what ``write(tmp_path)`` writes, so that a crash leaves either
    the old or the new file (the temporary name carries the pid: writers may race)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def cache_root() -> Path:
    """Where imagejepa caches what it computes (features, rendered scenes):
    ``$IMAGEJEPA_CACHE`` or ``~/.cache/imagejepa``."""
    return Path(os.environ.get("IMAGEJEPA_CACHE") or Path.home() / ".cache" / "imagejepa")
