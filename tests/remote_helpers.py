"""Tests of remote (`gs://`) paths without a bucket: TensorFlow's in-memory `ram://`
filesystem stands in for Cloud Storage, accepted as remote only inside the tests."""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

import pytest

from lasad_jax import validation


def gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


@pytest.fixture(name="ram")
def ram_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> str:
    """`ram`: a fresh `ram://` directory treated as remote (import `ram_fixture` into a
    test module to use it). The cache and the working
    directory are empty temporary folders, so a stray local write shows.

    `ram://` differs from Cloud Storage in one way that matters here: writing an
    existing file appends to it, where a bucket replaces the object whole. Opening for
    writing removes the old file first, as a bucket behaves."""
    io = gfile()
    monkeypatch.setattr(validation, "REMOTE_SCHEMES", ("gs://", "ram://"))
    monkeypatch.setenv("LASAD_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    class ReplacingGFile(io.GFile):
        def __init__(self, name: str, mode: str = "r"):
            if "w" in mode and io.exists(name):
                io.remove(name)
            super().__init__(name, mode)

    monkeypatch.setattr(io, "GFile", ReplacingGFile)
    return f"ram://{uuid.uuid4().hex}"


def upload(local: pathlib.Path, url: str) -> None:
    """Copies the local tree `local` to `url`."""
    io = gfile()
    for directory, _, names in os.walk(local):
        target = url + directory[len(str(local)):]
        io.makedirs(target)
        for name in names:
            io.copy(os.path.join(directory, name), f"{target}/{name}", overwrite=True)
