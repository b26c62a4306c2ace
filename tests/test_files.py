"""Outputs are written whole or not at all, through one helper, and a full or read-only
disk is one message naming the path (and the bytes)."""

from __future__ import annotations

import ast
import errno
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from lasad_jax import files

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
    """PNG, npz, npy and JSON files are written by `lasad_jax.files` only (atomically);
    the one other write is the empty marker of a finished download."""
    found = [w for p in sorted(PACKAGE.rglob("*.py")) if p.name != "files.py"
             for w in _writes(p)]
    assert found == ["interactive.py:50 open(..., 'w')"]
    assert _writes(PACKAGE / "files.py")  # the check sees writes where there are some
