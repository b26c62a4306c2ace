"""The resumable ADM sample batch and the checks around evaluation: parts of another
dtype or part size are refused before anything is generated, `assemble` counts before it
writes, a square crop needs a square image size, unreadable Inception weights get one
line, and too few samples for precision/recall fail when the config is read."""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lasad_jax.data.config import DataConfig
from lasad_jax.evaluation.config import EvalConfig
from lasad_jax.evaluation.real_images import dataset_images
from lasad_jax.evaluation.resize import resize_bicubic
from lasad_jax.evaluation.sample_batch import (
    assemble,
    batch_settings,
    check_settings,
    generate_parts,
    record_settings,
)
from lasad_jax.evaluation.weights import CONVERT_COMMAND, load_inception, network_digest
from lasad_jax.models import LASADGen
from lasad_jax.sampling.config import SampleConfig
from lasad_jax.sampling.sampler import weights_fingerprint
from lasad_jax.tokenizers import IntensityTokenizer, TokenizerConfig
from lasad_jax.validation import ConfigError
from tests.models.helpers import perturbed_model, small_config

TOKENIZER = IntensityTokenizer(levels=11, image_size=(3, 4), channels=1)
SAMPLE = SampleConfig(batch_size=4)


@pytest.fixture(scope="module")
def model():
    return perturbed_model(small_config("lasad"))


def parts(part_dir) -> list[str]:
    return sorted(f for f in os.listdir(part_dir) if f.startswith("part_"))


def run_parts(model, part_dir, **ev) -> int:
    return generate_parts(model, TOKENIZER, EvalConfig(**{"num_samples": 20, **ev}), SAMPLE,
                          num_classes=3, part_dir=str(part_dir), mesh=None)


def test_a_resume_with_another_part_size_is_refused(model, tmp_path):
    part_dir = tmp_path / "parts"
    assert run_parts(model, part_dir, part_size=8) == 3  # batches of 4, two to a part
    assert parts(part_dir) == ["part_00000.npz", "part_00001.npz", "part_00002.npz"]
    with open(part_dir / "settings.json") as f:
        assert json.load(f)["part_size"] == 8
    os.remove(part_dir / "part_00001.npz")  # interrupted
    # With part_size 4 part 1 would be samples 4-7, overlapping part 0's 0-7.
    with pytest.raises(ValueError, match=r"other settings \(part_size: 8 -> 4\)"):
        run_parts(model, part_dir, part_size=4)
    assert parts(part_dir) == ["part_00000.npz", "part_00002.npz"]  # nothing was made
    assert run_parts(model, part_dir, part_size=8) == 1
    assemble(str(part_dir), str(tmp_path / "out.npz"), 20)
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["labels"], np.arange(20) % 3)


def test_a_resume_with_another_dtype_is_refused(model, tmp_path):
    part_dir = tmp_path / "parts"
    run_parts(model, part_dir, part_size=8)
    os.remove(part_dir / "part_00002.npz")
    bf16 = LASADGen(small_config("lasad", dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(bf16, nnx.state(model))
    with pytest.raises(ValueError, match=r"other settings \(dtype: 'float32' -> 'bfloat16'\)"):
        run_parts(bf16, part_dir, part_size=8)
    assert parts(part_dir) == ["part_00000.npz", "part_00001.npz"]


def test_a_resume_with_another_runs_weights_is_refused(model, tmp_path):
    """Another run's checkpoint at the same step (a new run in a workdir whose
    checkpoints were moved away) must not add its images to these parts."""
    part_dir = tmp_path / "parts"
    run_parts(model, part_dir, part_size=8)
    os.remove(part_dir / "part_00002.npz")
    other = perturbed_model(small_config("lasad"))
    nnx.update(other, jax.tree.map(lambda p: -p, nnx.state(other, nnx.Param)))
    with pytest.raises(ValueError, match=r"other settings \(weights: sha256:\w{12} -> "):
        run_parts(other, part_dir, part_size=8)
    assert parts(part_dir) == ["part_00000.npz", "part_00001.npz"]


def test_the_job_settings_and_those_of_generate_parts_share_a_file(model, tmp_path):
    # The job records its settings first; generate_parts adds the numerics and part size,
    # and the job's own check on a rerun is not upset by them.
    ev = EvalConfig(num_samples=20, part_size=8)
    settings = batch_settings(ev, SAMPLE, step=4, mixer="lasad", tokenizer="sha256:x")
    part_dir = str(tmp_path / "parts")
    record_settings(part_dir, settings)
    run_parts(model, part_dir, part_size=8)
    with open(os.path.join(part_dir, "settings.json")) as f:
        recorded = json.load(f)
    assert recorded == {**settings, "dtype": "float32", "decode_state_dtype": "float32",
                        "decode_impl": "auto", "weights": weights_fingerprint(model),
                        "part_size": 8}
    check_settings(part_dir, settings)
    with pytest.raises(ValueError, match=r"checkpoint_step: 4 -> 5"):
        check_settings(part_dir, {**settings, "checkpoint_step": 5})
    # Given the model config, the job's settings (and so its results file) hold them too.
    full = batch_settings(ev, SAMPLE, step=4, mixer="lasad", tokenizer="sha256:x",
                          model_cfg=small_config("lasad", decode_state_dtype="bfloat16"))
    assert full == {**settings, "dtype": "float32", "decode_state_dtype": "bfloat16",
                    "decode_impl": "auto"}
    with pytest.raises(ValueError, match=r"decode_state_dtype: 'float32' -> 'bfloat16'"):
        check_settings(part_dir, full)


def test_parts_of_another_image_size_are_refused_both_ways(tmp_path):
    """`eval.image_size` is recorded even when 0 (the tokenizer's size): parts resized to
    16 px must not be scored as, or completed by, a run at the tokenizer's size, nor the
    other way round. A record made before the field was recorded meant 0."""
    def settings(image_size):
        return batch_settings(EvalConfig(num_samples=20, part_size=8, image_size=image_size),
                              SAMPLE, step=4, mixer="lasad", tokenizer="sha256:x")

    assert settings(0)["image_size"] == 0
    for made, asked in ((16, 0), (0, 16)):
        part_dir = str(tmp_path / f"made_{made}")
        record_settings(part_dir, settings(made))
        check_settings(part_dir, settings(made))
        with pytest.raises(ValueError, match=rf"other settings \(image_size: {made} -> {asked}\)"):
            check_settings(part_dir, settings(asked))
    old = tmp_path / "old"  # written before image_size was recorded
    old.mkdir()
    (old / "settings.json").write_text(json.dumps(
        {k: v for k, v in settings(0).items() if k != "image_size"}))
    check_settings(str(old), settings(0))
    with pytest.raises(ValueError, match=r"image_size: 0 -> 16"):
        check_settings(str(old), settings(16))


def _write_part(part_dir, index: int, first: int, count: int) -> None:
    np.savez(os.path.join(part_dir, f"part_{index:05d}.npz"),
             images=np.full((count, 2, 2, 3), index, np.uint8),
             labels=np.arange(first, first + count, dtype=np.int32))


def test_assemble_counts_before_writing(tmp_path):
    part_dir = tmp_path / "parts"
    part_dir.mkdir()
    _write_part(part_dir, 0, 0, 8)   # samples 0-7 (part_size 8)
    _write_part(part_dir, 1, 4, 4)   # samples 4-7 (part_size 4): an overlap
    _write_part(part_dir, 2, 8, 4)
    out = tmp_path / "out.npz"
    with pytest.raises(ValueError) as err:
        assemble(str(part_dir), str(out), 12)
    assert str(err.value) == (
        f"{part_dir}: its 3 parts hold 16 samples, expected 12 (parts of another run are "
        "mixed in); delete the directory, or set another config.eval.name")
    assert os.listdir(tmp_path) == ["parts"]  # nothing written, not even the memmap
    os.remove(part_dir / "part_00001.npz")
    os.remove(part_dir / "part_00002.npz")
    with pytest.raises(ValueError, match=r"hold 8 samples, expected 12 \(some parts are "
                                         r"missing\)"):
        assemble(str(part_dir), str(out), 12)
    # A part of other images (copied in by hand from a run at another size) is named.
    np.savez(part_dir / "part_00001.npz", images=np.zeros((4, 3, 3, 3), np.uint8),
             labels=np.arange(8, 12, dtype=np.int32))
    with pytest.raises(ValueError, match=r"part_00001.npz holds images of shape \(3, 3, 3\), "
                                         r"part_00000.npz of \(2, 2, 3\)"):
        assemble(str(part_dir), str(out), 12)
    assert sorted(os.listdir(tmp_path)) == ["parts"]  # the memmap is gone
    _write_part(part_dir, 1, 8, 4)
    assemble(str(part_dir), str(out), 12)
    with np.load(out) as batch:
        np.testing.assert_array_equal(batch["labels"], np.arange(12))
        np.testing.assert_array_equal(batch["arr_0"][:, 0, 0, 0], [0] * 8 + [1] * 4)


def test_image_folder_references_need_a_square_image_size(tmp_path):
    for c in "ab":
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "train" / c / "0.png")
    data = DataConfig(name="codes", image_source="imagefolder", image_dir=str(tmp_path),
                      num_classes=2)
    # Refused at the call, before any image is read.
    with pytest.raises(ValueError) as err:
        dataset_images(data, TokenizerConfig(name="intensity", image_size=(8, 12), channels=3),
                       "train", 0)
    assert str(err.value) == (
        "tokenizer.image_size must be square (height == width) for reference images of an "
        "image dataset (the ADM centre crop is square), got (8, 12)")
    square = TokenizerConfig(name="intensity", image_size=(8, 8), channels=3)
    [batch] = list(dataset_images(data, square, "train", 0))
    assert batch.shape == (2, 8, 8, 3)


@pytest.mark.parametrize("kind, why", [
    ("junk", "is not an .npz file (a zip archive)"),
    ("pickle", "is not an .npz file (a zip archive)"),
    ("torch", "is a PyTorch checkpoint, not converted weights"),
    ("objects", "holds pickled objects, not arrays"),
])
def test_unreadable_inception_weights_get_one_line(tmp_path, kind, why):
    path = tmp_path / "weights.bin"
    if kind == "junk":
        path.write_bytes(b"\x00garbage" * 100)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    elif kind == "torch":  # what torch.save writes: a zip around a pickle
        import zipfile
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", b"x")
    else:
        with open(path, "wb") as f:
            np.savez(f, w=np.array([{"a": 1}], dtype=object))
    # Its digest (recorded before the network is loaded) reads a zip's directory alone:
    # a file that is no zip gets the same line from it.
    for read in (load_inception, network_digest) if kind in ("junk", "pickle") else (
            load_inception,):
        with pytest.raises(ValueError) as err:
            read(str(path))
        assert str(err.value) == (f"eval.inception={str(path)!r} {why}; it must be the .npz "
                                  f"that `{CONVERT_COMMAND}` writes")
        assert "allow_pickle" not in str(err.value)


def test_too_few_samples_for_precision_recall_fail_when_the_config_is_read():
    why = "precision/recall need 3 nearest neighbours of each image"
    for n in (1, 3):
        with pytest.raises(ConfigError) as err:
            EvalConfig(num_samples=n)
        assert err.value.problems == (f"eval.num_samples must be >= 4 ({why}), got {n}",)
    with pytest.raises(ConfigError) as err:
        EvalConfig(reference_limit=2)
    assert err.value.problems == (
        f"eval.reference_limit must be 0 (all images) or >= 4 ({why}), got 2",)
    assert EvalConfig(num_samples=4, reference_limit=0).num_samples == 4
    with pytest.raises(ConfigError) as err:  # one line for one bad value
        EvalConfig(num_samples=0)
    assert err.value.problems == ("eval.num_samples must be a positive int, got 0",)


def test_eval_image_size_must_be_zero_or_positive():
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError) as err:
            EvalConfig(image_size=bad)
        assert err.value.problems == (
            f"eval.image_size must be 0 (the samples' own size) or a positive int, "
            f"got {bad!r}",)
    assert EvalConfig(image_size=256).image_size == 256


def test_parts_hold_the_resized_images_and_the_settings_record_the_size(model, tmp_path):
    run_parts(model, tmp_path / "native", part_size=8)
    run_parts(model, tmp_path / "resized", part_size=8, image_size=6)
    for name in parts(tmp_path / "native"):
        with np.load(tmp_path / "native" / name) as native, \
                np.load(tmp_path / "resized" / name) as resized:
            assert resized["images"].shape[1:] == (6, 6, 3)
            np.testing.assert_array_equal(resized["images"],
                                          resize_bicubic(native["images"], 6))
            np.testing.assert_array_equal(resized["labels"], native["labels"])
    # Recorded also when 0 (test_parts_of_another_image_size_are_refused_both_ways).
    plain = batch_settings(EvalConfig(), SAMPLE, step=1, mixer="lasad", tokenizer="t")
    sized = batch_settings(EvalConfig(image_size=6), SAMPLE, step=1, mixer="lasad",
                           tokenizer="t")
    assert plain["image_size"] == 0 and sized == {**plain, "image_size": 6}
