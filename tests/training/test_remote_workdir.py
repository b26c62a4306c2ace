"""A `gs://` workdir and `gs://` inputs, exercised on TensorFlow's in-memory `ram://`
filesystem (accepted as remote for these tests only): metrics appended and truncated
there, unreadable checkpoints moved aside there, inputs copied once to local disk, the
notebook's fetched copy refreshed when the run has newer checkpoints, and any other
scheme refused in one line naming the field."""

from __future__ import annotations

import json
import os
import pathlib
import types

import numpy as np
import pytest

from lasad_jax import files
from lasad_jax.data.codes import load_codes, write_codes
from lasad_jax.main import cli
from lasad_jax.sampling.interactive import fetch_workdir
from lasad_jax.tokenizers.config import TokenizerConfig, checkpoint_problems
from lasad_jax.tokenizers.geometry import code_geometry
from lasad_jax.training.checkpoint import Checkpointer
from lasad_jax.training.writers import JsonlWriter
from lasad_jax.validation import ConfigError
from tests.helpers import ROOT
from tests.remote_helpers import gfile, ram_fixture, upload  # noqa: F401 - a fixture


def _rows(url: str) -> list[int]:
    return [json.loads(line)["step"] for line in gfile().GFile(url).read().splitlines()]


def test_metrics_are_appended_and_truncated_in_a_remote_workdir(ram, tmp_path):
    path = f"{ram}/run/metrics.jsonl"
    gfile().makedirs(f"{ram}/run")
    writer = JsonlWriter(path)
    for step in (1, 2, 3, 4):
        writer.write_scalars(step, {"loss": np.float32(step)})
    writer.flush()
    assert _rows(path) == [1, 2, 3, 4]  # flushed rows are in the bucket before close
    writer.close()
    with gfile().GFile(path, "a") as f:
        f.write('{"step": 5, "lo')  # a process killed mid-line
    resumed = JsonlWriter(path, resume_step=2)  # the checkpoint it resumes from
    resumed.write_scalars(3, {"loss": 0.5})
    resumed.close()
    assert _rows(path) == [1, 2, 3]
    fresh = JsonlWriter(path, resume_step=0)  # a new run: the old rows are renamed
    fresh.write_scalars(1, {"loss": 2.0})
    fresh.close()
    assert _rows(path) == [1] and _rows(f"{path}.1") == [1, 2, 3]
    assert os.listdir(tmp_path / "cwd") == []


def test_unreadable_steps_are_moved_aside_in_a_remote_workdir(ram):
    directory = f"{ram}/run/checkpoints"
    for rel in ("3/state/array", "3/data", "5/state/array"):
        files.save_json(f"{directory}/{rel}", rel)
    reloaded = []
    fake = types.SimpleNamespace(directory=directory, manager=types.SimpleNamespace(
        reload=lambda: reloaded.append(True)))
    Checkpointer._move_aside(fake, [5], 3)
    names = sorted(gfile().listdir(directory))
    assert names[0] == "3" and names[1].startswith("corrupt-5-") and len(names) == 2
    assert gfile().exists(f"{directory}/{names[1]}/state/array") and reloaded == [True]


def test_codes_in_a_bucket_are_copied_once_and_read_locally(ram, tmp_path):
    codes = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 7
    write_codes(tmp_path / "codes", "train", codes, np.array([0, 1]))
    write_codes(tmp_path / "codes", "val", codes[:1], np.array([1]))
    upload(tmp_path / "codes", f"{ram}/in/codes")
    kwargs = {"grid_shape": (3, 4), "vocab_size": 7, "num_classes": 2}
    got, labels = load_codes(f"{ram}/in/codes", "train", **kwargs)
    np.testing.assert_array_equal(got, codes)
    np.testing.assert_array_equal(labels, [0, 1])
    copy = tmp_path / "cache" / files.cache_name(f"{ram}/in/codes")
    assert pathlib.Path(got.filename).parent == copy  # memory-mapped from the local copy
    assert (copy / files.COMPLETE).exists()
    got, _ = load_codes(f"{ram}/in/codes", "val", **kwargs)  # the same copy serves val
    assert pathlib.Path(got.filename).parent == copy
    assert os.listdir(tmp_path / "cwd") == []


def test_a_tokenizer_in_a_bucket_is_checked_remotely_and_copied_to_build(ram, tmp_path):
    from lasad_jax.convert.llamagen_vq import convert
    from lasad_jax.tokenizers.vq.weights import save_vq
    from lasad_jax.tokenizers.vq16 import VQ16Tokenizer
    from tests.convert.helpers import NARROW16, random_state_dict

    url = f"{ram}/vq_narrow"
    save_vq(url, convert(random_state_dict(NARROW16, seed=1), NARROW16), NARROW16)
    config = TokenizerConfig(image_size=(32, 48), checkpoint=url, codebook_size=64)
    geometry = code_geometry(config)  # reads the small JSON where it is, copies nothing
    assert (geometry.vocab_size, geometry.grid_shape) == (64, (2, 3))
    # A configured vocabulary the weights do not have is refused here, when the config
    # is parsed, rather than when a job builds the tokenizer.
    with pytest.raises(ValueError, match=r"tokenizer.codebook_size=16384, but the weights "
                                         rf"in '{url}' have 64 codes; set "
                                         r"tokenizer.codebook_size=64"):
        code_geometry(TokenizerConfig(image_size=(32, 48), checkpoint=url))
    assert checkpoint_problems(config, "decoding samples") == []
    assert not (tmp_path / "cache").exists()
    missing = TokenizerConfig(checkpoint=f"{ram}/nothing")
    assert checkpoint_problems(missing, "decoding samples")[0].startswith(
        f"tokenizer.checkpoint='{ram}/nothing' does not exist")
    tok = VQ16Tokenizer(url, (32, 48))
    assert tok.vocab_size == 64 and repr(tok).startswith(f"VQ16Tokenizer('{url}'")
    assert (tmp_path / "cache" / files.cache_name(url) / files.COMPLETE).exists()


def _checkpoint_steps(url: str, steps: list[int]) -> None:
    for step in steps:
        files.save_json(f"{url}/checkpoints/{step}/state", {"step": step})


def test_the_notebook_copy_follows_the_run(ram, tmp_path, caplog):
    cache = str(tmp_path / "nb")
    _checkpoint_steps(f"{ram}/runA/exp1", [2])
    _checkpoint_steps(f"{ram}/runB/exp1", [9])
    a = fetch_workdir(f"{ram}/runA/exp1", cache)
    b = fetch_workdir(f"{ram}/runB/exp1/", cache)
    assert a != b  # same last part, different runs: different copies
    assert os.listdir(os.path.join(a, "checkpoints")) == ["2"]
    assert os.listdir(os.path.join(b, "checkpoints")) == ["9"]
    assert fetch_workdir(f"{ram}/runA/exp1", cache) == a  # unchanged: reused
    _checkpoint_steps(f"{ram}/runA/exp1", [4])  # the run saved a newer step
    assert fetch_workdir(f"{ram}/runA/exp1", cache) == a
    assert sorted(os.listdir(os.path.join(a, "checkpoints"))) == ["2", "4"]
    assert json.loads(pathlib.Path(a, "checkpoints", "4", "state").read_text()) == {"step": 4}
    with pytest.raises(FileNotFoundError, match="no checkpoints/ under"):
        fetch_workdir(f"{ram}/nothing", cache)
    with pytest.raises(ConfigError, match=r"^checkpoint='file://x' uses the unsupported "):
        fetch_workdir("file://x", cache)


def test_other_schemes_are_refused_in_one_line_naming_the_field(capsys):
    status = cli(["lasad_jax.main", f"--config={ROOT / 'configs' / 'demo.py'}",
                  "--workdir=file:///tmp/run"])
    err = capsys.readouterr().err
    assert status == 1
    assert err == ("error: --workdir='file:///tmp/run' uses the unsupported scheme file://; "
                   "give a local path or a gs:// URL\n")
    with pytest.raises(ConfigError, match=r"^tokenizer.checkpoint='s3://b/vq' uses the "
                                          r"unsupported scheme s3://; give a local path or "
                                          r"a gs:// URL$"):
        TokenizerConfig(checkpoint="s3://b/vq")
