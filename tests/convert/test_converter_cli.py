"""The converters as commands: an output already there is kept, and an expected failure
is one `error:` line with exit status 1 (no torch here, or a missing weights file)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

# module, its arguments for weights at `src`, and the outputs it would write in `out`.
CONVERTERS = {
    "inception": (lambda src, out: [f"--torch_weights={src}", f"--out={out}/inception.npz"],
                  ["inception.npz"]),
    "llamagen_vq": (lambda src, out: [f"--checkpoint={src}", f"--out={out}"],
                    ["vq_params.npz", "vq_config.json"]),
    "lpips": (lambda src, out: [f"--vgg16={src}", f"--lin={src}", f"--out={out}/lpips.npz"],
              ["lpips.npz"]),
}


def _convert(name: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LASAD_TRACEBACK"}
    return subprocess.run([sys.executable, "-m", f"lasad_jax.convert.{name}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_an_output_in_the_way_is_kept(name, tmp_path):
    arguments, outputs = CONVERTERS[name]
    (tmp_path / outputs[-1]).write_text("someone's weights")
    proc = _convert(name, arguments(tmp_path / "absent.pth", tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {tmp_path / outputs[-1]} already exists; move it away or choose another "
        "--out (a converter never writes over a file)"]
    assert (tmp_path / outputs[-1]).read_text() == "someone's weights"


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_missing_weights_are_one_error_line(name, tmp_path):
    arguments, outputs = CONVERTERS[name]
    proc = _convert(name, arguments(tmp_path / "absent.pth", tmp_path))
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    # Without torch the converter says how to install it; with torch, which file is absent.
    assert "pip install torch" in lines[0] or "absent.pth' does not exist" in lines[0]
    assert not any((tmp_path / name).exists() for name in outputs)
