"""Every file prefopt writes whole goes through here: written under a temporary name in the same
directory, flushed and fsynced, then ``os.replace``-d onto its name. A reader (or a run that
resumes after a kill or a power cut) sees the old file or the new one, never a torn one, and a
failed write removes its temporary file and leaves the old file as it was.

The temporary name is unique per process and call (``.tmp-NAME-PID-UUID``), so two processes that
write one path at once never write into each other's file; the last rename wins. The file is
created with O_EXCL and the umask's mode, not mkstemp's 0600, which would survive the rename and
lock colleagues out of a shared directory.

JSON here is strict: NaN and ±inf become null (:func:`~prefopt.core.records.finite_or_none`), since
many parsers reject them and one rejected line would lose a whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from typing import IO, Any, Iterable, Iterator

from prefopt.core.records import finite_or_none

TMP_PREFIX = ".tmp-"


def cache_root() -> str:
    """Where built artifacts are cached (testbed policies and pairs, dequantized GGUF files, reference log-probs,
    π_ref's evaluation samples): ``$PREFOPT_CACHE``, default ~/.cache/prefopt."""
    return os.path.expanduser(os.environ.get("PREFOPT_CACHE", "~/.cache/prefopt"))


def fsync_dir(path: str) -> None:
    """Make a rename inside directory ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Flush a file written by someone else's writer (``torch.save``, a checkpoint library) to disk.
    Unlike :func:`fsync_dir`, a failure raises: the caller must not publish bytes that may be lost."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: str) -> str:
    """A fresh temporary name beside ``path``; leftovers carry :data:`TMP_PREFIX`, so cleaners find them."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f"{TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
    """``with atomic_open(path) as f: f.write(...)``: the file appears at ``path`` only when the block
    ends without an exception; on any exception (a full disk, Ctrl-C) the temporary file is removed
    and the exception propagates. ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode {mode!r}: accepted are 'w' and 'wb'")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with (os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding="utf-8")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str, obj: Any, *, indent: int | None = None, sort_keys: bool = False, default=None) -> None:
    """Strict JSON (NaN / ±inf written as null), ending in a newline when indented."""
    text = json.dumps(finite_or_none(obj), indent=indent, sort_keys=sort_keys, allow_nan=False, default=default)
    write_text(path, text + ("\n" if indent is not None else ""))


def write_jsonl(path: str, rows: Iterable[Any]) -> None:
    """One strict-JSON object per line."""
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(finite_or_none(row), allow_nan=False) + "\n")


def sha256_file(path: str, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
