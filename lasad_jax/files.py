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

Remote locations are `gs://` URLs only (`lasad_jax.validation.REMOTE_SCHEMES`). Outputs
there are written through TensorFlow's `tf.io.gfile` (imported when a remote path is met,
through `tensorflow()`, which keeps it off the GPUs): a Cloud Storage object appears whole
when its writer closes, which gives the same all-or-nothing guarantee as the local rename. Remote
inputs (codes, tokenizer weights) are copied once per host into a local cache
(`local_copy`) and then read by the local readers, which memory-map files. Any other
`scheme://` is refused in one line rather than written to a local folder named after
the URL.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np
from absl import logging
from PIL import Image, PngImagePlugin

from lasad_jax.validation import location_problem, url_scheme

# errno values that mean "this location cannot take the write": the user must act.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)

# Written last into a local copy: a folder without it is an interrupted copy.
COMPLETE = ".complete"


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
    """A supported URL (`gs://...`): read and written through tf.io.gfile, and the local
    disk checks do not apply. Any other `scheme://` raises ValueError, because treating
    it as local would write into a folder literally named `file:`."""
    problem = location_problem("path", path)
    if problem is not None:
        raise ValueError(problem)
    return url_scheme(path) is not None


@functools.cache
def tensorflow() -> Any:
    """TensorFlow, imported on first use and kept off every GPU: the package's one way in.

    Only three things need it (clu's TensorBoard writer, `gs://` paths through
    `tf.io.gfile`, and tfds preparing ImageNet), and its import takes seconds, so a job
    that needs none of them (sampling, evaluating, a config error) never loads it. A GPU
    build of TensorFlow (Colab's) would otherwise take GPU memory that belongs to JAX the
    first time it runs an op, so its GPUs are hidden before anything else uses it.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its start-up chatter
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as err:  # someone else ran TensorFlow first: theirs to place
        logging.warning("TensorFlow's GPUs could not be hidden from it: %s", err)
    return tf


def tf_gfile() -> Any:
    """`tf.io.gfile`, imported on first use: only remote paths need TensorFlow."""
    return tensorflow().io.gfile


class RemoteError(OSError):
    """A remote location could not be read (missing, no credentials, no network); the
    message names the URL and the cause in one line."""


def _remote_failure(err: Exception, url: str, doing: str) -> OSError:
    """TensorFlow's error for `url` as one line: FileNotFoundError when it is missing."""
    kind = FileNotFoundError if type(err).__name__ == "NotFoundError" else RemoteError
    return kind(f"cannot {doing} {url}: {_first_line(err)}; check the URL and that this "
                "machine's Google credentials may read it")


def _first_line(err: Exception) -> str:
    """The first line of TensorFlow's message (its `message` holds no traceback)."""
    text = str(getattr(err, "message", "") or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _remote_errors() -> tuple[type[BaseException], ...]:
    return (tensorflow().errors.OpError,)


def _lookup(path: str | os.PathLike, local: Callable[[str], bool], remote: str) -> bool:
    """`local(path)`, or for a supported URL tf.io.gfile's `remote` query; a remote lookup
    that fails (credentials, network) raises `RemoteError`."""
    path = os.fspath(path)
    if not is_remote(path):
        return local(path)
    try:
        return getattr(tf_gfile(), remote)(path)
    except _remote_errors() as err:
        raise _remote_failure(err, path, "look up") from err


def exists(path: str | os.PathLike) -> bool:
    """Whether `path` (local or a supported URL) exists."""
    return _lookup(path, os.path.exists, "exists")


def isdir(path: str | os.PathLike) -> bool:
    """Whether `path` (local or a supported URL) is a directory."""
    return _lookup(path, os.path.isdir, "isdir")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole file `path` (local or a supported URL): for small files, such as a
    config read while a run is validated, that are not worth a local copy."""
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    try:
        with tf_gfile().GFile(path, "rb") as f:
            return f.read()
    except _remote_errors() as err:
        raise _remote_failure(err, path, "read") from err


def free_name(path: str) -> str:
    """`path.1`, `path.2`, ...: the first that does not exist (where an earlier run's
    output is kept aside instead of written over)."""
    number = 1
    while exists(f"{path}.{number}"):
        number += 1
    return f"{path}.{number}"


def move(src: str, dst: str) -> None:
    """Renames the file or directory `src` to `dst`. A remote directory is moved file by
    file (a bucket has no directories to rename; Cloud Storage renames by copying)."""
    if not is_remote(src):
        os.rename(src, dst)
        return
    gfile = tf_gfile()
    if not gfile.isdir(src):
        gfile.rename(src, dst)
        return
    src, dst = src.rstrip("/"), dst.rstrip("/")
    for directory, _, names in list(gfile.walk(src)):
        # Cloud Storage lists subdirectories with a trailing "/": normalised here, since
        # "a//b" would be another object name.
        rel = directory[len(src):].strip("/")
        target = f"{dst}/{rel}" if rel else dst
        gfile.makedirs(target)
        for name in names:
            gfile.rename(f"{directory.rstrip('/')}/{name}", f"{target}/{name}")
    gfile.rmtree(src)


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


def missing_directories(path: str | os.PathLike) -> list[str]:
    """The directories of `path` that do not exist yet, deepest first (none for a remote
    path): what making it would create, and so what `remove_if_empty` may take back."""
    path = os.path.abspath(os.fspath(path))
    if is_remote(path):
        return []
    missing = []
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def remove_if_empty(directories: list[str]) -> None:
    """Removes each of `directories` (deepest first) that exists and is empty, stopping at
    the first that is not: a job that failed before it wrote anything leaves no empty
    workdir behind, and nothing else is touched."""
    for directory in directories:
        try:
            if os.listdir(directory):
                return
            os.rmdir(directory)
        except FileNotFoundError:
            continue
        except OSError:
            return


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
    `path`, atomically: a temporary file in the same directory, then `os.replace`; for a
    remote path, one upload, which the store publishes whole when it completes.

    `nbytes` (the size when `data` is a function) is what a full disk's message says is
    needed. A failure removes the temporary file and leaves `path` untouched. The file
    gets the permissions a plain `open` would give (0o666 less the umask), so others
    may read outputs on a shared disk as they may read any other file written there.
    """
    path = os.fspath(path)
    size = len(data) if isinstance(data, (bytes, bytearray)) else nbytes
    if is_remote(path):
        _write_remote(path, data)
        return
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
    it with one whose writes fail as on a full disk).

    Created with mode 0o666 so that the kernel applies the umask, as for any file a
    program opens: `tempfile.mkstemp`'s 0o600 would survive the rename and hide every
    output from the other users of a shared disk."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name next to", path)


def _write_remote(path: str, data: bytes | Callable[[IO[bytes]], Any]) -> None:
    """`data` uploaded to the URL `path` in one write: built in memory first, since a
    writer function may seek, which an upload stream cannot."""
    if callable(data):
        buffer = io.BytesIO()
        data(buffer)
        data = buffer.getvalue()
    gfile = tf_gfile()
    try:
        gfile.makedirs(path.rstrip("/").rsplit("/", 1)[0])
        with gfile.GFile(path, "wb") as f:
            f.write(data)
    except _remote_errors() as err:
        raise OutputError(errno.EIO, f"cannot write {path}: {_first_line(err)}; check that "
                          "the bucket exists and this machine's credentials may write to it"
                          ) from err


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


def cache_root() -> str:
    """Where remote inputs are copied: `$LASAD_CACHE`, else `~/.cache/lasad_jax`."""
    return os.environ.get("LASAD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "lasad_jax")


def cache_name(url: str) -> str:
    """The cache folder of `url`: its last part (readable) and 8 hex digits of its hash,
    so that `gs://b/runA/codes` and `gs://b/runB/codes` never share a copy."""
    url = url.rstrip("/")
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{url.rsplit('/', 1)[-1] or 'root'}-{digest}"


def _remote_files(url: str) -> Iterator[tuple[str, str, int, int]]:
    """`(relative directory, file name, bytes, modification time in ns)` of every file
    under the URL `url`."""
    gfile = tf_gfile()
    for directory, _, names in gfile.walk(url):
        rel = directory[len(url):].strip("/")
        if not names:
            yield rel, "", 0, 0  # an empty directory is copied too
        for name in names:
            stat = gfile.stat(f"{directory.rstrip('/')}/{name}")
            yield rel, name, stat.length, stat.mtime_nsec


def _copied_listing(marker: str) -> list | None:
    """The remote listing a complete copy was made from (None: a marker written before
    listings were recorded, which only held the URL)."""
    try:
        with open(marker) as f:
            return json.load(f)["files"]
    except (ValueError, KeyError, TypeError):
        return None


def local_copy(url: str, what: str, *, part: str = "", cache: str | None = None) -> str:
    """A local directory holding the remote directory `url` (or only its subdirectory
    `part`, copied to the same place under the result); a local `url` is returned as it
    is. The copy is made once per machine under `cache` (default `cache_root()`),
    in a folder named by `cache_name(url)`, and reused while complete and while the
    remote directory lists the same files with the same sizes and modification times;
    one that changed (codes extracted again, a newer checkpoint) is copied again. When
    the bucket cannot be listed, a complete copy is used, with a warning.

    Readers memory-map codes and open weights with plain file calls, which a bucket
    does not serve: copying once keeps every reader local and tested. The marker file
    `COMPLETE` is written last, so an interrupted copy is removed and redone, never half
    used; a lock keeps the processes of one machine from copying at the same time.
    `what` names the config field in the messages (the URL missing, the disk too full).
    """
    if not is_remote(url):
        return url
    url = url.rstrip("/")
    root = cache or cache_root()
    dst = os.path.join(root, cache_name(url))
    marker = os.path.join(dst, COMPLETE)
    src = f"{url}/{part.strip('/')}" if part else url

    def remote_listing() -> list[list]:
        try:
            if not tf_gfile().isdir(src):
                raise FileNotFoundError(f"{what}={url!r}: {src} is not a directory (or is "
                                        "not readable with this machine's credentials)")
            return [list(item) for item in _remote_files(src)]
        except _remote_errors() as err:
            raise _remote_failure(err, src, f"list {what}") from err

    if os.path.exists(marker):
        try:
            listing = remote_listing()
        except (FileNotFoundError, RemoteError) as err:
            logging.warning("cannot list %s (%s); reading the local copy %s made earlier",
                            src, err, dst)
            return dst
        if _copied_listing(marker) == listing:
            logging.info("reading %s from its local copy %s", url, dst)
            return dst
    os.makedirs(root, exist_ok=True)
    with open(dst + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        listing = remote_listing()
        if os.path.exists(marker) and _copied_listing(marker) == listing:
            return dst  # another process of this machine copied it meanwhile
        if os.path.exists(marker):
            logging.warning("%s changed since it was copied to %s (files added, removed or "
                            "rewritten): copying it again", src, dst)
            shutil.rmtree(dst)
        elif os.path.exists(dst):
            logging.warning("removing the interrupted copy %s of %s; copying again", dst, url)
            shutil.rmtree(dst)
        total = sum(item[2] for item in listing)
        require_space(root, total, f"the local copy of {what} ({url})")
        _copy_files(src, os.path.join(dst, part.strip("/")) if part else dst, listing, total)
        with open(marker, "w") as f:
            json.dump({"url": url, "files": listing}, f)
    return dst


def _copy_files(src: str, dst: str, listing: list[list], total: int) -> None:
    """Copies the files of `listing` from `src` to `dst`, logging progress every 30 s."""
    gfile = tf_gfile()
    logging.info("copying %s (%d files, %s) to %s", src, len(listing), human_bytes(total), dst)
    start = last = time.monotonic()
    done = 0
    for rel, name, size, _ in listing:
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        if not name:
            continue
        remote = "/".join(x for x in (src, rel, name) if x)
        try:
            gfile.copy(remote, os.path.join(dst, rel, name), overwrite=True)
        except _remote_errors() as err:
            raise _remote_failure(err, remote, "copy") from err
        done += size
        if time.monotonic() - last > 30:
            last = time.monotonic()
            logging.info("copied %s of %s from %s", human_bytes(done), human_bytes(total), src)
    logging.info("copied %s from %s to %s in %.0f s", human_bytes(total), src, dst,
                 time.monotonic() - start)


def listdir(path: str | os.PathLike) -> list[str]:
    """The names in the directory `path` (local or a supported URL), without the trailing
    "/" Cloud Storage gives subdirectories; a remote listing that fails raises as `exists`."""
    if not is_remote(path):
        return os.listdir(path)
    try:
        return [name.rstrip("/") for name in tf_gfile().listdir(os.fspath(path))]
    except _remote_errors() as err:
        raise _remote_failure(err, os.fspath(path), "list") from err


def parent(path: str | os.PathLike) -> str:
    """The directory holding `path`: absolute for a local path, the URL cut at its last
    "/" for a remote one (`os.path.abspath` would make `gs://b/x` into `/cwd/gs:/b/x`)."""
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(path))


def upload_file(local: str | os.PathLike, url: str) -> None:
    """Copies the local file `local` to the URL `url` in one upload, streamed from disk.

    For outputs too large to build in memory, as `write_atomically` does for a URL (an
    assembled sample batch is gigabytes); the object still appears whole when the upload
    completes."""
    gfile = tf_gfile()
    try:
        gfile.makedirs(parent(url))
        gfile.copy(os.fspath(local), url, overwrite=True)
    except _remote_errors() as err:
        raise OutputError(errno.EIO, f"cannot write {url}: {_first_line(err)}; check that "
                          "the bucket exists and this machine's credentials may write to it"
                          ) from err


def local_file(url: str, what: str, *, cache: str | None = None) -> str:
    """A local copy of the single remote file `url` (a local path is returned as it is),
    for readers that open files by path (zip members, memory maps).

    The copy lives in `cache` (default `cache_root()`) under `cache_name(url)` and is
    reused while the remote file keeps the size and modification time recorded next to
    it (a file written again is copied again); it is written under a temporary name and
    renamed, so an interrupted copy is never used. `what` names the input in messages."""
    if not is_remote(url):
        return url
    gfile = tf_gfile()
    directory = os.path.join(cache or cache_root(), cache_name(url))
    dst = os.path.join(directory, url.rstrip("/").rsplit("/", 1)[-1])
    try:
        stat = gfile.stat(url)
    except _remote_errors() as err:
        raise _remote_failure(err, url, f"read {what}") from err
    version = f"{stat.length} {stat.mtime_nsec}\n"
    source = dst + ".source"
    if os.path.exists(dst) and os.path.exists(source):
        with open(source) as f:
            if f.read() == version:
                return dst
    os.makedirs(directory, exist_ok=True)
    require_space(directory, stat.length, f"the local copy of {what} ({url})")
    tmp = f"{dst}.{secrets.token_hex(4)}.tmp"
    try:
        gfile.copy(url, tmp, overwrite=True)
        os.replace(tmp, dst)
    except _remote_errors() as err:
        raise _remote_failure(err, url, f"copy {what}") from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(source, "w") as f:
        f.write(version)
    return dst
