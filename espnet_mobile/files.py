"""Files written whole or not at all, and content hashes: the one place the project does either.

Every writer goes through :func:`atomic_path` (the backends' own
:func:`converters.base.atomic_output`): the content is written under a hidden
temporary name in the same folder and renamed over the final name only when
it is complete, so a crash or ``kill -9`` leaves the previous file, never half
of a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from converters.base import atomic_output as atomic_path

__all__ = ["atomic_path", "sha256_bytes", "sha256_path", "write_bytes_atomic", "write_json_atomic",
           "write_text_atomic"]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (flushed to disk before the rename); readers see the old file or the new one."""
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any, *, default: Any = None) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=default) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted) for an .mlpackage."""
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(f.relative_to(path)).encode())
            digest.update(sha256_path(f).encode())
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
