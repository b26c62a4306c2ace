"""Outputs are written whole or not at all, through one helper, and a full or read-only
disk is one message naming the path (and the bytes)."""

from __future__ import annotations

import ast
import errno
import json
import os
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from lasad_jax import files
from tests.remote_helpers import gfile, ram_fixture, upload  # noqa: F401 - a fixture

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lasad_jax"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    files.save_json(path, {"fid": 1.0})

    def half_then_crash(f):
        f.write(b'{"fid": ')
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(path, half_then_crash)
    assert json.loads(path.read_text()) == {"fid": 1.0}
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_full_disk_names_the_path_and_the_bytes(tmp_path, monkeypatch):
    real = files._temporary

    def full(path):
        f, tmp = real(path)
        f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
        return f, tmp

    monkeypatch.setattr(files, "_temporary", full)
    with pytest.raises(files.OutputError) as err:
        files.save_npz(tmp_path / "samples.npz", arr_0=np.zeros((10, 8, 8, 3), np.uint8))
    assert err.value.errno == errno.ENOSPC
    assert err.value.strerror.startswith(f"no space left for writing {tmp_path}/samples.npz: "
                                         "it needs 1.9 KB, ")
    assert os.listdir(tmp_path) == []


def test_checks_before_a_long_job(tmp_path, monkeypatch):
    files.require_space(tmp_path, 10, "ten bytes")
    monkeypatch.setattr(files, "free_bytes", lambda directory: 999)
    with pytest.raises(files.OutputError, match=r"no space left for the thing in .*: it needs "
                                                r"about 2.0 MB, 999 bytes are free"):
        files.require_space(tmp_path, 2_000_000, "the thing")
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(files.OutputError, match="a_file is a file, not a directory"):
        files.require_writable(tmp_path / "a_file")
    with pytest.raises(files.OutputError, match="a part of that path is a file"):
        files.require_writable(tmp_path / "a_file" / "run")
    files.require_writable(tmp_path / "new" / "dir")  # made, and left empty
    assert os.listdir(tmp_path / "new" / "dir") == []
    assert files.free_bytes("gs://bucket/run") is None  # no local check for a URL


def test_formats_are_written_at_exactly_the_path(tmp_path):
    files.save_npz(tmp_path / "bare", a=np.arange(3))
    with np.load(tmp_path / "bare") as npz:
        np.testing.assert_array_equal(npz["a"], np.arange(3))
    files.save_npy(tmp_path / "codes.npy", np.arange(4, dtype=np.int16))
    assert np.load(tmp_path / "codes.npy").dtype == np.int16
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    files.save_png(tmp_path / "grid.png", image, text={"made_by": "step 7"})
    with Image.open(tmp_path / "grid.png") as png:
        np.testing.assert_array_equal(np.asarray(png), image)
        assert png.text == {"made_by": "step 7"}
    assert sorted(os.listdir(tmp_path)) == ["bare", "codes.npy", "grid.png"]


def _writes(path: pathlib.Path) -> list[str]:
    """Calls in `path` that write a file other than through `lasad_jax.files`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name) else getattr(func, "attr", None)
                or getattr(func, "id", ""))
        if name in ("np.save", "np.savez", "np.savez_compressed", "json.dump", "write_text",
                    "write_bytes", "imwrite"):
            found.append(f"{path.name}:{node.lineno} {name}")
        if name == "open" and any(isinstance(a, ast.Constant) and str(a.value)[:1] in "wx"
                                  for a in node.args[1:2]):
            found.append(f"{path.name}:{node.lineno} open(..., {node.args[1].value!r})")
        if name == "save" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
            found.append(f"{path.name}:{node.lineno} Image.save")
    return found


def test_every_output_goes_through_the_one_helper():
    """PNG, npz, npy and JSON files are written by `lasad_jax.files` only (atomically,
    or as one upload for a gs:// path), with no exception elsewhere."""
    found = [w for p in sorted(PACKAGE.rglob("*.py")) if p.name != "files.py"
             for w in _writes(p)]
    assert found == []
    assert _writes(PACKAGE / "files.py")  # the check sees writes where there are some


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_of_the_umask(tmp_path, umask):
    """Not tempfile's 0o600: others may read outputs as the umask allows."""
    old = os.umask(umask)
    try:
        files.save_json(tmp_path / "eval.json", {"fid": 1.0})
        files.save_npy(tmp_path / "deep" / "codes.npy", np.arange(3))
    finally:
        os.umask(old)
    for path in (tmp_path / "eval.json", tmp_path / "deep" / "codes.npy"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_remote_outputs_land_there_and_nowhere_local(ram, tmp_path):
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    files.save_json(f"{ram}/run/eval/result.json", {"fid": 2.5})
    files.save_png(f"{ram}/run/grid.png", image, text={"made_by": "step 7"})
    files.save_npz(f"{ram}/run/samples.npz", arr_0=np.arange(5))
    io = gfile()
    assert json.loads(io.GFile(f"{ram}/run/eval/result.json").read()) == {"fid": 2.5}
    with io.GFile(f"{ram}/run/grid.png", "rb") as f, Image.open(f) as png:
        np.testing.assert_array_equal(np.asarray(png), image)
        assert png.text == {"made_by": "step 7"}
    with io.GFile(f"{ram}/run/samples.npz", "rb") as f, np.load(f) as npz:
        np.testing.assert_array_equal(npz["arr_0"], np.arange(5))
    assert sorted(io.listdir(f"{ram}/run")) == ["eval", "grid.png", "samples.npz"]
    assert os.listdir(tmp_path / "cwd") == []  # no local "ram:" folder named after the URL
    assert files.exists(f"{ram}/run/grid.png") and files.isdir(f"{ram}/run/eval")
    assert files.read_bytes(f"{ram}/run/eval/result.json") == b'{\n "fid": 2.5\n}\n'


def test_other_schemes_are_refused_in_one_line():
    assert files.is_remote("gs://bucket/run") and not files.is_remote("/data/run")
    assert not files.is_remote("runs/a://b")  # a "://" inside a local name is no scheme
    for url in ("file:///tmp/run", "s3://bucket/run", "ram://x"):
        with pytest.raises(ValueError, match=r"^path='.*' uses the unsupported scheme "
                                             r"[a-z0-9]+://; give a local path or a gs:// URL$"):
            files.is_remote(url)
        with pytest.raises(ValueError, match="unsupported scheme"):
            files.save_json(f"{url}/x.json", {})
    assert files.location_problem("--workdir", "file://x") == (
        "--workdir='file://x' uses the unsupported scheme file://; give a local path or a "
        "gs:// URL")
    assert files.location_problem("--workdir", "gs://b/run") is None


def test_remote_move_renames_a_directory_file_by_file(ram):
    io = gfile()
    for rel in ("7/state/a", "7/data"):
        files.save_json(f"{ram}/ckpt/{rel}", [rel])
    files.move(f"{ram}/ckpt/7", f"{ram}/ckpt/corrupt-7")
    assert not io.exists(f"{ram}/ckpt/7")
    assert json.loads(io.GFile(f"{ram}/ckpt/corrupt-7/state/a").read()) == ["7/state/a"]
    assert json.loads(io.GFile(f"{ram}/ckpt/corrupt-7/data").read()) == ["7/data"]


def _tree(root: pathlib.Path, content: str) -> pathlib.Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(content)
    (root / "sub" / "b.bin").write_bytes(b"\x00" * 100)
    return root


def test_local_copy_copies_once_then_reuses(ram, tmp_path, monkeypatch):
    monkeypatch.setenv("LASAD_CACHE", str(tmp_path / "cache"))
    upload(_tree(tmp_path / "src", "one"), f"{ram}/x/codes")
    local = files.local_copy(f"{ram}/x/codes/", "data.codes_dir")
    assert local == str(tmp_path / "cache" / files.cache_name(f"{ram}/x/codes"))
    assert pathlib.Path(local, "a.txt").read_text() == "one"
    assert pathlib.Path(local, "sub", "b.bin").read_bytes() == b"\x00" * 100
    assert os.path.exists(os.path.join(local, files.COMPLETE))
    # A complete copy is reused while the bucket lists the same files: nothing copied.
    copy = gfile().copy
    monkeypatch.setattr(gfile(), "copy", lambda *a, **k: pytest.fail("copied again"))
    assert files.local_copy(f"{ram}/x/codes", "data.codes_dir") == local
    monkeypatch.setattr(gfile(), "copy", copy)
    # Local paths pass through unchanged.
    assert files.local_copy(str(tmp_path / "src"), "data.codes_dir") == str(tmp_path / "src")


def test_local_copy_follows_the_bucket(ram, tmp_path, monkeypatch):
    """A copy of a directory that changed since (codes extracted again, a file added, one
    rewritten in place: another size or modification time) is made again; a bucket that
    cannot be listed leaves the complete copy in use."""
    import types

    cache, url = str(tmp_path / "cache"), f"{ram}/codes"
    upload(_tree(tmp_path / "src", "one"), url)
    local = pathlib.Path(files.local_copy(url, "data.codes_dir", cache=cache))
    with gfile().GFile(f"{url}/a.txt", "w") as f:
        f.write("three")
    with gfile().GFile(f"{url}/new.txt", "w") as f:
        f.write("new")
    assert files.local_copy(url, "data.codes_dir", cache=cache) == str(local)
    assert (local / "a.txt").read_text() == "three" and (local / "new.txt").is_file()
    with gfile().GFile(f"{url}/a.txt", "w") as f:  # the same size, rewritten later
        f.write("four!")
    stat = gfile().stat
    monkeypatch.setattr(gfile(), "stat", lambda path: types.SimpleNamespace(
        length=stat(path).length, mtime_nsec=stat(path).mtime_nsec + 1))
    files.local_copy(url, "data.codes_dir", cache=cache)
    assert (local / "a.txt").read_text() == "four!"
    gfile().rmtree(url)  # gone, or no network: the copy made earlier is read
    assert files.local_copy(url, "data.codes_dir", cache=cache) == str(local)
    assert (local / "a.txt").read_text() == "four!"


def test_local_copy_redoes_an_interrupted_copy(ram, tmp_path):
    upload(_tree(tmp_path / "src", "fresh"), f"{ram}/codes")
    cache = tmp_path / "cache"
    stale = cache / files.cache_name(f"{ram}/codes")
    stale.mkdir(parents=True)
    (stale / "a.txt").write_text("half")      # a copy killed midway: no marker
    (stale / "gone.txt").write_text("stale")
    local = files.local_copy(f"{ram}/codes", "data.codes_dir", cache=str(cache))
    assert local == str(stale)
    assert sorted(os.listdir(local)) == [files.COMPLETE, "a.txt", "sub"]
    assert (stale / "a.txt").read_text() == "fresh"


def test_local_copy_keeps_urls_with_the_same_last_part_apart(ram, tmp_path):
    upload(_tree(tmp_path / "a", "run A"), f"{ram}/runA/codes")
    upload(_tree(tmp_path / "b", "run B"), f"{ram}/runB/codes")
    cache = str(tmp_path / "cache")
    a = files.local_copy(f"{ram}/runA/codes", "data.codes_dir", cache=cache)
    b = files.local_copy(f"{ram}/runB/codes", "data.codes_dir", cache=cache)
    assert a != b and os.path.basename(a).startswith("codes-")
    assert pathlib.Path(a, "a.txt").read_text() == "run A"
    assert pathlib.Path(b, "a.txt").read_text() == "run B"


def test_local_copy_checks_the_url_and_the_disk_first(ram, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"^data.codes_dir='ram://.*/nothing': "):
        files.local_copy(f"{ram}/nothing", "data.codes_dir", cache=cache)
    upload(_tree(tmp_path / "src", "x"), f"{ram}/codes")
    monkeypatch.setattr(files, "free_bytes", lambda directory: 50)
    with pytest.raises(files.OutputError, match=r"no space left for the local copy of "
                                                r"data.codes_dir .* needs about 101 bytes"):
        files.local_copy(f"{ram}/codes", "data.codes_dir", cache=cache)
    assert not os.path.exists(os.path.join(cache, files.cache_name(f"{ram}/codes"),
                                           files.COMPLETE))


def test_tensorflow_is_kept_off_the_gpus_once(monkeypatch):
    """`files.tensorflow()` hides every GPU from TensorFlow before returning it, once per
    process; a TensorFlow someone already started is left as it is, with a warning."""
    import types

    calls = []

    def set_visible_devices(devices, kind):
        calls.append((list(devices), kind))
        if len(calls) > 1:
            raise RuntimeError("Visible devices cannot be modified after being initialized")

    fake = types.ModuleType("tensorflow")
    fake.config = types.SimpleNamespace(set_visible_devices=set_visible_devices)
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    files.tensorflow.cache_clear()
    try:
        assert files.tensorflow() is fake and files.tensorflow() is fake
        assert calls == [([], "GPU")]
        files.tensorflow.cache_clear()
        assert files.tensorflow() is fake  # the second call raises: warned, not fatal
        assert len(calls) == 2
    finally:
        files.tensorflow.cache_clear()  # the next caller imports the real one
