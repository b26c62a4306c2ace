"""Samples, evaluation parts and results, and reference statistics in a `gs://` workdir,
on TensorFlow's in-memory `ram://` filesystem (accepted as remote here only): a finished
draw is found and not drawn again, evaluation parts resume and assemble in the bucket,
the reference and results already there are read, not made again, and extraction
into a bucket is refused in one line.

Each test also checks that nothing was written to the working directory, where the old
code made folders named `ram:`."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest
from flax import nnx

from lasad_jax import files
from lasad_jax.config import parse
from lasad_jax.data.config import DataConfig, run_problems
from lasad_jax.evaluation.config import EvalConfig
from lasad_jax.evaluation.inception import POOL_DIM, SPATIAL_DIM
from lasad_jax.evaluation.reference import content_digest, write_reference
from lasad_jax.evaluation.sample_batch import assemble, batch_settings, generate_parts
from lasad_jax.evaluation.weights import describe_network
from lasad_jax.jobs import evaluate, reference_stats
from lasad_jax.models import LASADGen
from lasad_jax.sampling import sampler
from lasad_jax.sampling.config import SampleConfig
from lasad_jax.tokenizers import IntensityTokenizer, build_tokenizer
from tests.helpers import tiny_demo_config
from tests.models.helpers import perturbed_model, small_config
from tests.remote_helpers import gfile, ram_fixture  # noqa: F401 - a fixture

TOKENIZER = IntensityTokenizer(levels=11, image_size=(3, 4), channels=1)


@pytest.fixture(scope="module")
def model():
    return perturbed_model(small_config("lasad"))


def _cwd_is_empty() -> bool:
    return os.listdir(".") == []


def _npz(url: str) -> np.lib.npyio.NpzFile:
    return np.load(io.BytesIO(files.read_bytes(url)))


def test_a_remote_draw_is_made_once(model, ram, monkeypatch):
    drawn = []
    real = sampler.sample_images
    monkeypatch.setattr(sampler, "sample_images",
                        lambda *a, **k: drawn.append(1) or real(*a, **k))
    cfg = SampleConfig(per_class=2, batch_size=4)
    out = f"{ram}/run"
    first = sampler.sample_to_files(model, TOKENIZER, cfg, num_classes=3, out_dir=out, step=5)
    assert first["npz"].startswith(out) and all(gfile().exists(p) for p in first.values())
    again = sampler.sample_to_files(model, TOKENIZER, cfg, num_classes=3, out_dir=out, step=5)
    assert again == first and len(drawn) == 1  # found in the bucket, not drawn again
    with _npz(first["npz"]) as f:
        assert f["arr_0"].shape == (6, 3, 4, 3)
    assert _cwd_is_empty()


def test_remote_evaluation_parts_resume_and_assemble(model, ram):
    part_dir = f"{ram}/run/eval/eval"
    ev = EvalConfig(num_samples=20, part_size=8)

    def run_parts() -> int:
        return generate_parts(model, TOKENIZER, ev, SampleConfig(batch_size=4), num_classes=3,
                              part_dir=part_dir, mesh=None)

    assert run_parts() == 3
    assert files.listdir(part_dir) == ["part_00000.npz", "part_00001.npz", "part_00002.npz",
                                       "settings.json"]
    assert json.loads(files.read_bytes(f"{part_dir}/settings.json"))["part_size"] == 8
    with _npz(f"{part_dir}/part_00001.npz") as part:
        kept = part["images"].copy()
    gfile().remove(f"{part_dir}/part_00001.npz")  # a run interrupted before this part
    assert run_parts() == 1  # only the missing part is made again, the same images
    with _npz(f"{part_dir}/part_00001.npz") as part:
        np.testing.assert_array_equal(part["images"], kept)
    out = f"{ram}/run/eval/eval.npz"
    assemble(part_dir, out, 20)
    with _npz(out) as batch:
        assert batch["arr_0"].shape == (20, 3, 4, 3) and batch["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(batch["labels"], np.arange(20) % 3)
        np.testing.assert_array_equal(batch["arr_0"][8:16], kept)
    with pytest.raises(ValueError, match="expected 21"):  # read remotely, counted first
        assemble(part_dir, f"{ram}/other.npz", 21)
    assert not gfile().exists(f"{ram}/other.npz")
    assert _cwd_is_empty()


def _config():
    config = tiny_demo_config()
    config.sample.update(batch_size=8, cfg_scale=2.0)
    config.eval.update(num_samples=20, part_size=8, reference_limit=24, inception_batch_size=8)
    return config


def _write_reference(url: str, config) -> None:
    """Statistics of the right shapes recording the settings `config` makes them with."""
    tokenizer = build_tokenizer(config.tokenizer)
    settings = reference_stats.reference_settings(config, tokenizer)
    write_reference(url, {"mu": np.zeros(POOL_DIM), "sigma": np.eye(POOL_DIM),
                          "mu_s": np.zeros(SPATIAL_DIM), "sigma_s": np.eye(SPATIAL_DIM),
                          "preprocess": config.eval.preprocess,
                          "inception": describe_network(config.eval.inception),
                          "settings": settings})


def _no_network(*_, **__):
    raise AssertionError("the work was done already: no network should be loaded")


def test_remote_reference_statistics_are_found(ram, monkeypatch):
    monkeypatch.setattr(reference_stats, "load_network", _no_network)
    config = parse(_config(), "reference_stats")
    path = f"{ram}/run/reference_stats.npz"
    _write_reference(path, config)
    assert reference_stats.run(config, f"{ram}/run") == path
    split = "train" if config.eval.reference_split != "train" else "val"
    other = dataclasses.replace(config, eval=dataclasses.replace(config.eval,
                                                                 reference_split=split))
    with pytest.raises(ValueError, match=f"{path} holds other reference statistics"):
        reference_stats.run(other, f"{ram}/run")
    assert _cwd_is_empty()


def test_remote_evaluation_results_are_read(ram, monkeypatch):
    # A finished evaluation: the reference, the batch and its scores are in the bucket.
    monkeypatch.setattr(evaluate, "load_network", _no_network)
    config = parse(_config(), "evaluate")
    model = LASADGen(config.model, rngs=nnx.Rngs(0))
    monkeypatch.setattr(evaluate, "restore_model", lambda *_: (model, 4, None))
    workdir = f"{ram}/run"
    ref = f"{workdir}/reference_stats.npz"
    _write_reference(ref, config)
    tokenizer = build_tokenizer(config.tokenizer)
    settings = batch_settings(config.eval, config.sample, step=4, mixer=config.model.mixer,
                              tokenizer=tokenizer.fingerprint, model_cfg=config.model,
                              weights=sampler.weights_fingerprint(model))
    scores = {"fid": 1.0, "sfid": 2.0, "inception_score": 3.0, "precision": 0.5,
              "recall": 0.5}
    done = {**scores, **settings, "reference": ref, "preprocess": config.eval.preprocess,
            "reference_digest": content_digest(files.local_file(ref, "reference")),
            "inception": describe_network(config.eval.inception)}
    files.save_json(f"{workdir}/eval/eval.json", done)
    files.write_atomically(f"{workdir}/eval/eval.npz", b"the batch")
    assert evaluate.run(config, workdir) == done
    # Scores of another checkpoint are refused, naming the remote file.
    files.save_json(f"{workdir}/eval/eval.json", {**done, "checkpoint_step": 3})
    with pytest.raises(ValueError, match=r"eval/eval.json holds the scores of another "
                       r"evaluation \(checkpoint_step: 3 -> 4\)"):
        evaluate.run(config, workdir)
    assert _cwd_is_empty()


def test_extraction_into_a_bucket_is_refused_in_one_line(ram, tmp_path):
    data = DataConfig(name="extracted", codes_dir=f"{ram}/codes", tfds_data_dir=str(tmp_path))
    problems = run_problems(data, "extract")
    assert problems == [f"data.codes_dir='{ram}/codes' is remote: extract to a local "
                        "directory, then copy it to the bucket with gsutil -m cp -r"]
    assert run_problems(dataclasses.replace(data, codes_dir=str(tmp_path)), "extract") == []
