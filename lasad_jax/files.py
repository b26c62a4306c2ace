"""Writing outputs: whole files or nothing, and a full or read-only disk said in one line.

Every PNG, npz, npy and JSON file the package writes goes through `write_atomically`:
the bytes go to a temporary file in the same directory, which is then renamed over the
target (`os.replace`, atomic on POSIX). A reader, or a run killed mid-write, never sees
half a file, and a failed write leaves the old file (if any) as it was.

A write that fails because the disk is full or the directory is not writable raises
`OutputError`, whose message names the path and, for a full disk, the bytes needed and
free; the command line prints it as one `error:` line. `require_space` and
`require_writable` ask the same questions before a long job starts, so that it fails
in its first second rather than after hours (the checkpoints, which Orbax writes, are
checked this way before every save).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import IO, Any

import numpy as np
from PIL import Image, PngImagePlugin

# errno values that mean "this location cannot take the write": the user must act.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class OutputError(OSError):
    """An output cannot be written (full disk, read-only or forbidden location); the
    message names the path and what to do."""


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def is_remote(path: str | os.PathLike) -> bool:
    """A URL (`gs://...`): the local disk checks do not apply."""
    return "://" in os.fspath(path)


def _existing(path: str) -> str:
    """`path` or its nearest existing ancestor (what `disk_usage` can measure)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_bytes(directory: str | os.PathLike) -> int | None:
    """Bytes free on the disk of `directory` (or of its nearest existing parent); None
    for a URL."""
    if is_remote(directory):
        return None
    return shutil.disk_usage(_existing(os.fspath(directory))).free


def no_space(path: str | os.PathLike, needed: int | None, what: str = "") -> OutputError:
    """The error of a full disk, naming the path, the bytes needed and those free."""
    free = free_bytes(os.path.dirname(os.path.abspath(os.fspath(path))))
    need = f"needs {human_bytes(needed)}" if needed is not None else "needs more space"
    have = f", {human_bytes(free)} free" if free is not None else ""
    return OutputError(errno.ENOSPC, f"no space left for {what or 'writing'} {os.fspath(path)}: "
                       f"it {need}{have}; free space on that disk or use a --workdir on "
                       "another one")


def not_writable(path: str | os.PathLike, reason: str) -> OutputError:
    return OutputError(errno.EROFS, f"cannot write {os.fspath(path)}: {reason}; make it "
                       "writable or use a --workdir (or output path) that is")


def not_a_directory(path: str | os.PathLike) -> OutputError:
    return OutputError(errno.ENOTDIR, f"the output directory (--workdir, or an output path) "
                       f"{os.fspath(path)} is a file, not a directory; choose another")


def require_space(directory: str | os.PathLike, needed: int, what: str) -> None:
    """Raises `OutputError` when the disk of `directory` has fewer than `needed` bytes
    free (`what` says what they are for). Does nothing for a URL."""
    free = free_bytes(directory)
    if free is not None and free < needed:
        raise OutputError(errno.ENOSPC, f"no space left for {what} in {os.fspath(directory)}: "
                          f"it needs about {human_bytes(needed)}, {human_bytes(free)} "
                          "are free; free space on that disk or use a --workdir on another one")


def require_writable(directory: str | os.PathLike) -> None:
    """Creates `directory` if needed and proves it takes a file (one created and removed
    at once, so nothing in it changes); `OutputError` naming it otherwise."""
    directory = os.fspath(directory)
    if is_remote(directory):
        return
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise not_a_directory(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise as_output_error(err, directory) from err


def as_output_error(err: OSError, path: str | os.PathLike, needed: int | None = None,
                    what: str = "") -> OSError:
    """`err` as an `OutputError` when it means a full or unwritable location, else itself."""
    if isinstance(err, OutputError):
        return err
    if err.errno in NO_SPACE:
        return no_space(path, needed, what)
    if err.errno in NOT_WRITABLE:
        return not_writable(path, os.strerror(err.errno).lower())
    if err.errno == errno.ENOTDIR:
        return OutputError(errno.ENOTDIR, f"cannot write {os.fspath(path)}: a part of that "
                           "path is a file, not a directory; choose another --workdir (or "
                           "output path)")
    return err


def write_atomically(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], Any], *,
                     nbytes: int | None = None) -> None:
    """Writes `data` (bytes, or a function that writes into a binary file) to exactly
    `path`, atomically: a temporary file in the same directory, then `os.replace`.

    `nbytes` (the size when `data` is a function) is what a full disk's message says is
    needed. A failure removes the temporary file and leaves `path` untouched.
    """
    path = os.fspath(path)
    size = len(data) if isinstance(data, (bytes, bytearray)) else nbytes
    tmp = None
    try:
        f, tmp = _temporary(path)
        with f:
            if callable(data):
                data(f)
            else:
                f.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise as_output_error(err, path, size) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _temporary(path: str) -> tuple[IO[bytes], str]:
    """The open temporary file `write_atomically` fills, next to `path` (tests replace
    it with one whose writes fail as on a full disk)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    return os.fdopen(fd, "wb"), tmp


def save_json(path: str | os.PathLike, obj: Any, *, indent: int = 1) -> None:
    write_atomically(path, (json.dumps(obj, indent=indent) + "\n").encode())


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """An uncompressed `.npz` at exactly `path` (np.savez appends `.npz` to a bare name)."""
    write_atomically(path, lambda f: np.savez(f, **arrays),
                     nbytes=sum(np.asarray(a).nbytes for a in arrays.values()))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    write_atomically(path, lambda f: np.save(f, array), nbytes=np.asarray(array).nbytes)


def save_png(path: str | os.PathLike, image: np.ndarray, text: dict[str, str] | None = None
             ) -> None:
    """uint8 `[H, W, C]` (C = 1 or 3) as a PNG; `text` goes into its text chunks (what
    made the image, readable with `PIL.Image.open(path).text`)."""
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        buffer, format="PNG", pnginfo=info)
    write_atomically(path, buffer.getvalue())
