"""`--mode=reference_stats` and `--mode=evaluate` on a tiny trained demo model: the sample
batch format, resumable generation, settings guard, results file and config errors.

The 2048 x 2048 matrix square roots of FID/sFID take ~45 s each on 2 CPU cores, so the
Frechet distance is replaced here by a cheap stand-in; the real one is tested against
scipy in test_eval_metrics.py.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.evaluation import metrics as eval_metrics
from lasad_jax.evaluation.inception import POOL_DIM, SPATIAL_DIM, random_arrays
from lasad_jax.evaluation.reference import content_digest, load_reference, write_reference
from lasad_jax.evaluation.weights import save_inception
from lasad_jax.jobs import evaluate, reference_stats, train
from tests.helpers import hash_tree, tiny_demo_config
from tests.remote_helpers import gfile, ram_fixture  # noqa: F401 - a fixture


def problems(config, mode):
    with pytest.raises(ValueError) as err:
        parse(config, mode)
    return err.value.problems


def run_evaluation(config, workdir):
    return evaluate.run(parse(config, "evaluate"), workdir)


def eval_config(**overrides):
    config = tiny_demo_config()
    config.num_steps = 4
    config.sample.update(batch_size=8, cfg_scale=2.0)
    config.eval.update(num_samples=20, part_size=8, reference_limit=24, inception_batch_size=8)
    config.eval.update(overrides)
    return config


# The tests that read it are one `xdist_group`: a module fixture runs once per worker
# that needs it, and this one trains a model (20 s on 2 cores).
TRAINED = pytest.mark.xdist_group("evaluate_trained")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("eval_run"))
    train.run(parse(eval_config(), "train"), workdir)
    return workdir


@pytest.fixture(autouse=True)
def cheap_frechet(monkeypatch):
    def stand_in(mu1, sigma1, mu2, sigma2, eps=1e-6):
        return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2))

    monkeypatch.setattr(eval_metrics, "frechet_distance", stand_in)


@pytest.mark.slow
def test_evaluate_needs_reference_first(tmp_path):
    config = eval_config(reference=str(tmp_path / "missing.npz"))
    assert any("config.eval.reference" in p for p in problems(config, "evaluate"))
    config = eval_config()
    with pytest.raises(FileNotFoundError, match="--mode=reference_stats"):
        run_evaluation(config, str(tmp_path))  # a workdir without statistics


@pytest.mark.slow
@TRAINED
def test_reference_stats_then_evaluate_then_resume(trained):
    config = eval_config()
    path = reference_stats.run(parse(config, "reference_stats"), trained)
    ref = load_reference(path)
    assert ref.mu.shape == (2048,) and ref.pool.shape == (24, 2048)
    assert ref.inception.startswith("random")

    result = run_evaluation(config, trained)
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(result[key]), key
    assert 1.0 <= result["inception_score"] <= 1008
    assert result["checkpoint_step"] == 4 and result["cfg_scale"] == 2.0
    out = os.path.join(trained, "eval")
    with open(os.path.join(out, "eval.json")) as f:
        assert json.load(f)["fid"] == result["fid"]
    with np.load(os.path.join(out, "eval.npz")) as npz:
        images, labels = npz["arr_0"], npz["labels"]
    assert images.shape == (20, 8, 8, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.arange(20) % 10)
    parts = sorted(f for f in os.listdir(os.path.join(out, "eval")) if f.startswith("part_"))
    assert parts == ["part_00000.npz", "part_00001.npz", "part_00002.npz"]

    # An interrupted run: part 1 and the assembled batch are gone. The rerun makes part 1
    # only, and the images are those of the uninterrupted run.
    part0 = os.path.join(out, "eval", "part_00000.npz")
    before = os.stat(part0).st_mtime_ns
    os.remove(os.path.join(out, "eval", "part_00001.npz"))
    os.remove(os.path.join(out, "eval.npz"))
    again = run_evaluation(config, trained)
    assert os.stat(part0).st_mtime_ns == before
    with np.load(os.path.join(out, "eval.npz")) as npz:
        np.testing.assert_array_equal(npz["arr_0"], images)
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-6)

    # The same evaluation, and the same statistics, again: nothing is written.
    before = hash_tree(trained)
    assert run_evaluation(config, trained) == again
    assert reference_stats.run(parse(config, "reference_stats"), trained) == path
    assert hash_tree(trained) == before
    with open(os.path.join(out, "eval", "settings.json")) as f:
        recorded = json.load(f)
    assert recorded["checkpoint_step"] == 4 and recorded["tokenizer"].startswith("sha256:")

    # Other settings never mix into the same directory.
    changed = eval_config()
    changed.sample.cfg_scale = 1.5
    with pytest.raises(ValueError, match="cfg_scale"):
        run_evaluation(changed, trained)

    # Nor as scores against other statistics written to the same path: the results
    # record the reference's content, not only its name.
    kept = open(path, "rb").read()
    write_reference(path, {k: getattr(ref, k) + (k == "mu") for k in
                           ("mu", "sigma", "mu_s", "sigma_s", "pool")})
    with pytest.raises(ValueError, match="reference_digest: sha256:"):
        run_evaluation(config, trained)
    with open(path, "wb") as f:
        f.write(kept)
    assert run_evaluation(config, trained) == again

    # Nor are these scores passed off as those of another preprocessing (here against
    # images alone, which any preprocessing may score): the results file names it.
    assert result["preprocess"] == "adm"
    images_only = os.path.join(trained, "images_only.npz")
    np.savez(images_only, arr_0=images)
    changed = eval_config(reference=images_only, preprocess="pytorch_fid")
    with pytest.raises(ValueError, match="preprocess: 'adm' -> 'pytorch_fid'"):
        run_evaluation(changed, trained)
    os.remove(images_only)

    # Nor those of another dtype, which the checkpoint does not fix but which changes the
    # images: an interrupted batch resumed in bfloat16 is refused before any part is made.
    os.remove(os.path.join(out, "eval", "part_00002.npz"))
    os.remove(os.path.join(out, "eval.npz"))
    changed = eval_config()
    changed.model.dtype = "bfloat16"
    with pytest.raises(ValueError, match=r"dtype: 'float32' -> 'bfloat16'"):
        run_evaluation(changed, trained)
    assert not os.path.exists(os.path.join(out, "eval", "part_00002.npz"))


def test_eval_config_errors_name_the_field(tmp_path):
    config = eval_config(inception=str(tmp_path / "nope.npz"), num_samples=0,
                         inception_batch_size=0)
    found = problems(config, "evaluate")
    assert any("config.eval.inception" in p and "pt_inception-2015-12-05" in p for p in found)
    assert any("config.eval.num_samples must be a positive int" in p for p in found)
    assert any("config.eval.inception_batch_size must be a positive int" in p for p in found)
    config = eval_config(reference_split="test")
    assert any("reference_split" in p for p in problems(config, "reference_stats"))


def test_a_bucket_reference_is_checked_in_the_bucket(ram, tmp_path):
    """`eval.reference` may be a bucket URL (the job reads a local copy): parsing looks
    for it there rather than on the local disk."""
    local = tmp_path / "ref.npz"
    np.savez(local, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    gfile().copy(str(local), f"{ram}/ref.npz")
    parse(eval_config(reference=f"{ram}/ref.npz"), "evaluate")  # accepted
    found = problems(eval_config(reference=f"{ram}/gone.npz"), "evaluate")
    assert f"config.eval.reference='{ram}/gone.npz' is not a file" in found
    found = problems(eval_config(reference="s3://b/ref.npz"), "evaluate")
    assert any(p.startswith("config.eval.reference='s3://b/ref.npz' uses the unsupported")
               for p in found)


@pytest.mark.slow
@TRAINED
def test_eval_image_size_resizes_the_batch_and_its_reference(trained, tmp_path):
    # One batch of samples and as many reference images: the sizes are what is tested.
    config = eval_config(name="resized", image_size=16, reference=str(tmp_path / "ref16.npz"),
                         num_samples=8, reference_limit=8)
    reference_stats.run(parse(config, "reference_stats"), trained)
    assert load_reference(tmp_path / "ref16.npz").settings["image_size"] == [16, 16]
    result = run_evaluation(config, trained)
    assert np.isfinite(result["fid"]) and result["image_size"] == 16
    with np.load(os.path.join(trained, "eval", "resized.npz")) as npz:
        assert npz["arr_0"].shape == (8, 16, 16, 3)


def test_a_reference_of_another_image_size_is_refused_naming_both(tmp_path):
    """An ADM batch records no settings, but its `arr_0` shows its size: 16 px reference
    images against the demo's 8 px samples are refused before any model is restored (the
    workdir has none), unless `eval.image_size` resizes the samples to them."""
    adm = str(tmp_path / "adm_16px.npz")
    np.savez(adm, arr_0=np.zeros((5, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError) as err:
        run_evaluation(eval_config(reference=adm), str(tmp_path))
    assert str(err.value) == (
        f"{adm} holds [16, 16] images, but the samples are [8, 8] (the tokenizer's size; "
        "config.eval.image_size=0); set config.eval.image_size=16 to resize the samples to "
        "its size (bicubic, as LlamaGen scores 384 px models), or use another reference")
    config = parse(eval_config(reference=adm, image_size=16), "evaluate")
    tokenizer = evaluate.build_tokenizer(config.tokenizer)
    evaluate._check_reference(load_reference(adm), adm, config, tokenizer)  # passes
    # Our statistics record the size they were made at.
    ours = str(tmp_path / "ours.npz")
    made = reference_stats.reference_settings(parse(eval_config(), "reference_stats"),
                                              tokenizer)
    write_reference(ours, {"mu": np.zeros(POOL_DIM), "sigma": np.eye(POOL_DIM),
                           "mu_s": np.zeros(SPATIAL_DIM), "sigma_s": np.eye(SPATIAL_DIM),
                           "settings": made})
    with pytest.raises(ValueError) as err:
        evaluate._check_reference(load_reference(ours), ours, config, tokenizer)
    assert str(err.value) == (
        f"{ours} holds statistics of [8, 8] images, but the samples are [16, 16] "
        "(config.eval.image_size); make the reference again (--mode=reference_stats) with "
        "the same config.eval.image_size, or set config.eval.reference")


def test_a_reference_of_another_preprocessing_is_refused_before_sampling(tmp_path):
    """ADM's batch records no mode, but its statistics come from the TF graph ("adm"):
    with `eval.preprocess="pytorch_fid"` it is refused before any model is restored (the
    workdir has none), naming the field. Images alone carry no statistics and pass."""
    adm = str(tmp_path / "adm.npz")
    np.savez(adm, arr_0=np.zeros((5, 8, 8, 3), np.uint8), mu=np.zeros(POOL_DIM),
             sigma=np.eye(POOL_DIM), mu_s=np.zeros(SPATIAL_DIM), sigma_s=np.eye(SPATIAL_DIM))
    config = eval_config(reference=adm, preprocess="pytorch_fid")
    with pytest.raises(ValueError) as err:
        run_evaluation(config, str(tmp_path))
    assert str(err.value) == (
        f"{adm} holds statistics made with Inception preprocessing 'adm', but "
        "config.eval.preprocess is 'pytorch_fid'; set config.eval.preprocess=adm, or use a "
        "reference made with 'pytorch_fid' (--mode=reference_stats)")
    images = str(tmp_path / "images.npz")
    np.savez(images, arr_0=np.zeros((5, 8, 8, 3), np.uint8))
    run = parse(eval_config(reference=images, preprocess="pytorch_fid"), "evaluate")
    evaluate._check_reference(load_reference(images), images, run,
                              evaluate.build_tokenizer(run.tokenizer))  # passes


@pytest.mark.slow
@TRAINED
def test_a_bucket_workdir_evaluates_as_a_local_one(trained, ram, monkeypatch):
    """Reference statistics and an evaluation in a bucket (`ram://` standing in for
    `gs://`): the batch is assembled and scored on local disk, uploaded, and the scores
    equal those of the same evaluation in a local workdir. The checkpoint is restored
    from the local run: Orbax reads `gs://` itself but does not know `ram://`."""
    io = gfile()
    real_restore = evaluate.restore_model
    monkeypatch.setattr(evaluate, "restore_model",
                        lambda config, workdir, tok: real_restore(config, trained, tok))
    config = eval_config(name="twin")
    reference_stats.run(parse(config, "reference_stats"), trained)
    local = run_evaluation(config, trained)

    url = f"{ram}/run"
    path = reference_stats.run(parse(config, "reference_stats"), url)
    assert path == f"{url}/reference_stats.npz" and io.exists(path)
    remote = run_evaluation(config, url)
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert remote[key] == pytest.approx(local[key], rel=1e-6), key
    assert remote["samples"] == f"{url}/eval/twin.npz"
    with np.load(io.GFile(remote["samples"], "rb")) as npz, \
            np.load(os.path.join(trained, "eval", "twin.npz")) as want:
        np.testing.assert_array_equal(npz["arr_0"], want["arr_0"])
    assert json.loads(io.GFile(f"{url}/eval/twin.json").read())["fid"] == remote["fid"]
    assert os.listdir(".") == []  # nothing written where a `ram:` folder would appear
    staging = os.path.join(os.environ["LASAD_CACHE"], "staging")
    assert not os.path.isdir(staging) or os.listdir(staging) == []
    assert run_evaluation(config, url) == remote  # done: read back, not made again


def test_a_reference_of_other_inception_weights_is_refused(tmp_path):
    """Two weight files, or one replaced by another at the same path: the path alone
    cannot tell them apart; the recorded content digest does, before any sampling (the
    workdir has no model). The same weights moved elsewhere pass."""
    first, other, moved = (str(tmp_path / name) for name in ("a.npz", "b.npz", "c.npz"))
    save_inception(first, random_arrays(1))
    save_inception(other, random_arrays(2))
    shutil.copy(first, moved)
    run = parse(eval_config(inception=first), "reference_stats")
    made = reference_stats.reference_settings(run, reference_stats.build_tokenizer(run.tokenizer))
    assert made["inception_digest"] == content_digest(first)
    ours = str(tmp_path / "ref.npz")
    write_reference(ours, {"mu": np.zeros(POOL_DIM), "sigma": np.eye(POOL_DIM),
                           "mu_s": np.zeros(SPATIAL_DIM), "sigma_s": np.eye(SPATIAL_DIM),
                           "inception": made["inception"], "settings": made})
    with pytest.raises(ValueError) as err:
        run_evaluation(eval_config(reference=ours, inception=other), str(tmp_path))
    assert str(err.value).startswith(f"{ours} was made with other Inception weights ({first}, "
                                     "sha256:")
    assert f"than config.eval.inception='{other}' (sha256:" in str(err.value)
    # The same weights elsewhere get past the check, to the missing model.
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_evaluation(eval_config(reference=ours, inception=moved), str(tmp_path))
    # --mode=reference_stats keeps the file for the same settings and network, and
    # refuses it once other weights lie at the network's path.
    same = parse(eval_config(reference=ours, inception=first), "reference_stats")
    assert reference_stats.run(same, str(tmp_path)) == ours
    shutil.copy(other, first)
    with pytest.raises(ValueError, match=r"holds other reference statistics \(inception_digest"):
        reference_stats.run(same, str(tmp_path))
