"""Offline code extraction (views, shards, manifest, resume) and training on its output."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from lasad_jax.data import DataConfig, build_source, eval_batches, train_iterator
from lasad_jax.data.extract import extract_codes, extract_split, make_views, shard_paths
from lasad_jax.data.extracted import (ExtractedSource, load_extracted, manifest_path,
                                      require_one_tokenizer)
from lasad_jax.data.images import CorruptImageError, ImageFolderSource, adm_center_crop
from lasad_jax.tokenizers import IntensityTokenizer

SIZES = [(9, 11), (13, 8), (8, 8), (21, 10), (10, 17), (12, 12), (30, 9)]
CLASSES = ("b", "a", "c")  # folder i % 3 gets this name; sorted labels are a=0, b=1, c=2


@pytest.fixture
def image_dir(tmp_path):
    """7 noise PNGs of odd sizes in 3 classes: every view of every image differs."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        (tmp_path / "train" / CLASSES[i % 3]).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "train" / CLASSES[i % 3] / f"{i}.png")
    return tmp_path / "train"


def _tok(size=8):
    return IntensityTokenizer(levels=16, image_size=(size, size), channels=3)


def _extract(source, out, **kwargs):
    args = dict(split="train", image_size=8, augment="flip", shard_size=3, batch_size=2)
    args.update(kwargs)
    return extract_codes(source, _tok(args["image_size"]), out, **args)


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

# ---------------------------------------------------------------- views and shards


def test_flip_extraction_writes_exact_codes_in_shards(image_dir, tmp_path):
    source, tok = ImageFolderSource(image_dir), _tok()
    manifest = _extract(source, tmp_path / "codes")
    assert manifest["complete"] and manifest["num_images"] == 7 and manifest["num_skipped"] == 0
    cfg = manifest["config"]
    assert (cfg["views"], cfg["grid"], cfg["vocab_size"], cfg["augment"]) == (2, [8, 8], 16, "flip")
    assert cfg["tokenizer"] == tok.fingerprint and cfg["tokenizer"].startswith("sha256:")
    assert manifest["tokenizer_description"].startswith("IntensityTokenizer(levels=16")
    assert [s["num_images"] for s in manifest["shards"]] == [3, 3, 1]
    codes = np.concatenate([np.load(shard_paths(tmp_path / "codes", "train", k)[0])
                            for k in range(3)])
    labels = np.concatenate([np.load(shard_paths(tmp_path / "codes", "train", k)[1])
                             for k in range(3)])
    assert codes.dtype == np.int16 and codes.shape == (7, 2, 8, 8) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, source.labels)
    for i in range(7):
        expected = tok.encode(adm_center_crop(Image.open(source.paths[i]), 8)[None])[0]
        np.testing.assert_array_equal(codes[i, 0], expected)
        np.testing.assert_array_equal(codes[i, 1], expected[:, ::-1])
    assert not list((tmp_path / "codes").glob("*.tmp"))


def test_tencrop_views_sit_at_torchvision_positions():
    # A 22x22 image is its own ADM crop at 1.1 x 20; pixel (y, x) holds (10y, 10x, 0).
    yx = np.indices((22, 22)) * 10
    image = np.stack([yx[0], yx[1], np.zeros((22, 22), int)], -1).astype(np.uint8)
    views = make_views(image, 20, "tencrop")
    assert views.shape == (10, 20, 20, 3)
    # (top, left) of centre (round((22 - 20) / 2) = 1), then the four corners.
    for k, (top, left) in enumerate([(1, 1), (0, 0), (0, 2), (2, 0), (2, 2)]):
        np.testing.assert_array_equal(views[k], image[top:top + 20, left:left + 20])
        np.testing.assert_array_equal(views[k + 5], views[k][:, ::-1])
    assert make_views(image, 20, "none").shape == (1, 20, 20, 3)
    with pytest.raises(ValueError, match=r"augment must be one of none, flip, tencrop; got 'x'"):
        make_views(image, 20, "x")


def test_tencrop_extraction_encodes_ten_views(image_dir, tmp_path):
    source = ImageFolderSource(image_dir)
    manifest = _extract(source, tmp_path / "codes", image_size=20, augment="tencrop",
                        shard_size=10, batch_size=3)
    assert manifest["config"]["views"] == 10 and len(manifest["shards"]) == 1
    codes = np.load(shard_paths(tmp_path / "codes", "train", 0)[0])
    assert codes.shape == (7, 10, 20, 20)
    for i in (0, 6):
        views = make_views(Image.open(source.paths[i]), 20, "tencrop")
        np.testing.assert_array_equal(codes[i], _tok(20).encode(views))


def test_resume_gives_identical_files(image_dir, tmp_path):
    source = ImageFolderSource(image_dir)
    _extract(source, tmp_path / "full")
    full = _files(tmp_path / "full")
    out = tmp_path / "part"
    part = _extract(source, out, max_shards=1)
    assert len(part["shards"]) == 1 and not part["complete"]
    with pytest.raises(ValueError, match=r"extraction of 'train' is unfinished .*re-run it"):
        load_extracted(out, "train", grid_shape=(8, 8), vocab_size=16, num_classes=3)
    _extract(source, out, max_shards=1)
    assert _files(out).keys() == {"train-manifest.json", "train-00000-codes.npy",
                                  "train-00000-labels.npy", "train-00001-codes.npy",
                                  "train-00001-labels.npy"}
    _extract(source, out)
    assert _files(out) == full
    # A job killed after writing shard 2 but before recording it: redone, same bytes.
    manifest = json.loads(manifest_path(out, "train").read_text())
    manifest["shards"].pop()
    manifest.update(num_images=6, complete=False)
    manifest_path(out, "train").write_text(json.dumps(manifest))
    shard_paths(out, "train", 2)[1].unlink()
    _extract(source, out)
    assert _files(out) == full


def test_a_different_config_is_refused(image_dir, tmp_path):
    source = ImageFolderSource(image_dir)
    _extract(source, tmp_path, max_shards=1)
    with pytest.raises(ValueError, match=r"different extraction config .*'augment': \('flip', "
                                         r"'none'\).*empty directory"):
        _extract(source, tmp_path, augment="none")
    with pytest.raises(ValueError, match=r"'shard_size': \(3, 4\)"):
        _extract(source, tmp_path, shard_size=4)
    with pytest.raises(ValueError, match=r"tokenizer reads images of shape \(8, 8, 3\), but "
                                         r"extraction crops to \(10, 10, 3\)"):
        extract_codes(source, _tok(), tmp_path, split="train", image_size=10)


def test_splits_with_other_class_folders_are_refused(image_dir, tmp_path):
    """A val tree lacking class "b" would label "c" 1 where train labels it 2."""
    val = image_dir.parent / "val"
    for name in ("a", "c"):
        (val / name).mkdir(parents=True)
        Image.fromarray(np.full((9, 9, 3), 7, np.uint8)).save(val / name / "0.png")
    train_source, val_source = ImageFolderSource(image_dir), ImageFolderSource(val)
    assert list(val_source.labels) == [0, 1]  # "c" is 1 here, 2 in train
    out = tmp_path / "codes"
    assert _extract(train_source, out)["class_names"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"'val' split has 2 classes but .*train-manifest"
                                         r".json records 3 \(only in 'val': \[\], only "
                                         r"there: \['b'\]\)"):
        _extract(val_source, out, split="val")
    assert not manifest_path(out, "val").exists()
    other = tmp_path / "codes2"  # the other order is refused the same way
    _extract(val_source, other, split="val")
    with pytest.raises(ValueError, match="'train' split has 3 classes"):
        _extract(train_source, other)


def test_codes_of_another_tokenizer_are_never_mixed_in(image_dir, tmp_path):
    """The manifest records the tokenizer's content fingerprint: resuming with another
    tokenizer (here one more grey level) is refused, naming both, and writes nothing."""
    source, out = ImageFolderSource(image_dir), tmp_path / "codes"
    _extract(source, out, max_shards=1)
    before = _files(out)
    other = IntensityTokenizer(levels=15, image_size=(8, 8), channels=3)
    with pytest.raises(ValueError, match=r"holds codes of tokenizer sha256:[0-9a-f]{12} "
                                         r"\(IntensityTokenizer\(levels=16.*but this run's "
                                         r"tokenizer is sha256:[0-9a-f]{12} \(IntensityTokenizer"
                                         r"\(levels=15.*must not be mixed"):
        extract_codes(source, other, out, split="train", image_size=8, augment="flip",
                      shard_size=3, batch_size=2)
    assert _files(out) == before


def test_codes_of_other_images_are_never_mixed_in(image_dir, tmp_path):
    """The manifest records which images it holds (paths below the root and sizes):
    resuming over another tree with as many images, or over this one after a file
    changed, is refused and writes nothing; the same tree moved elsewhere resumes."""
    source, out = ImageFolderSource(image_dir), tmp_path / "codes"
    _extract(source, out, max_shards=1)
    before = _files(out)
    assert json.loads(manifest_path(out, "train").read_text())["config"]["source"] == (
        source.fingerprint)
    other = tmp_path / "other" / "train"
    for i, path in enumerate(source.paths):  # 7 images in 3 classes, other pixels
        (other / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8 + i, 9, 3), i, np.uint8)).save(other / path.parent.name
                                                                   / f"x{i}.png")
    assert len(ImageFolderSource(other)) == len(source)
    with pytest.raises(ValueError, match=r"holds codes of the images sha256:[0-9a-f]{12} "
                                         r"\(ImageFolderSource\(root=.*, but this run reads "
                                         r"sha256:[0-9a-f]{12} .*two datasets must not be mixed"):
        _extract(ImageFolderSource(other), out)
    with open(source.paths[-1], "ab") as f:  # one file grows: the same names, other bytes
        f.write(b"\0")
    with pytest.raises(ValueError, match="two datasets must not be mixed"):
        _extract(ImageFolderSource(image_dir), out)
    assert _files(out) == before
    with open(source.paths[-1], "r+b") as f:
        f.truncate(source.paths[-1].stat().st_size - 1)
    moved = tmp_path / "moved"
    image_dir.rename(moved)
    assert _extract(ImageFolderSource(moved), out)["complete"]


def test_the_splits_of_one_directory_share_a_tokenizer(image_dir, tmp_path):
    """Extraction refuses a split of another tokenizer beside one already there, and
    training refuses a directory whose splits were merged by hand from two."""
    out = tmp_path / "codes"
    _extract(ImageFolderSource(image_dir), out)
    other = IntensityTokenizer(levels=15, image_size=(8, 8), channels=3)
    with pytest.raises(ValueError, match=r"train-manifest.json holds codes of tokenizer "
                                         r"sha256:[0-9a-f]{12} \(IntensityTokenizer\(levels=16"
                                         r".*tokenizer for the 'val' split is sha256:"
                                         r".*must come from one tokenizer"):
        extract_codes(ImageFolderSource(image_dir), other, out, split="val", image_size=8,
                      augment="none")
    assert not manifest_path(out, "val").exists()
    # Val extracted apart by a tokenizer of the same geometry (as two VQ weights would
    # be), then moved in beside train.
    apart = tmp_path / "apart"
    extract_codes(ImageFolderSource(image_dir), _tok(), apart, split="val", image_size=8,
                  augment="none")
    manifest = json.loads(manifest_path(apart, "val").read_text())
    manifest["config"]["tokenizer"] = "sha256:" + "0" * 64
    manifest_path(apart, "val").write_text(json.dumps(manifest))
    for path in apart.iterdir():
        path.rename(out / path.name)
    data = DataConfig(name="extracted", num_classes=3, codes_dir=str(out))
    train, val = (build_source(data, split, _tok()) for split in ("train", "val"))
    with pytest.raises(ValueError, match=r"holds train codes of tokenizer sha256:[0-9a-f]{12} "
                                         r"and val codes of tokenizer sha256:[0-9a-f]{12}; "
                                         r"validation needs the training split's tokenizer"):
        require_one_tokenizer(train, val, str(out))
    require_one_tokenizer(train, train, str(out))


def test_corrupt_images_stop_or_are_skipped_and_counted(image_dir, tmp_path):
    (image_dir / "a" / "4_bad.png").write_bytes(b"not a png")  # index 2: a/1, a/4, a/4_bad
    source = ImageFolderSource(image_dir)
    with pytest.raises(CorruptImageError, match=r"a/4_bad\.png"):
        _extract(source, tmp_path / "strict")
    manifest = _extract(source, tmp_path / "lenient", skip_corrupt=True)
    assert manifest["num_skipped"] == 1 and manifest["num_images"] == 7
    assert manifest["skipped"][0]["index"] == 2 and "4_bad.png" in manifest["skipped"][0]["error"]
    extracted = load_extracted(tmp_path / "lenient", "train", grid_shape=(8, 8), vocab_size=16,
                               num_classes=3)
    keep = [i for i in range(len(source)) if i != 2]
    assert [int(extracted[j]["label"]) for j in range(7)] == source.labels[keep].tolist()
    tok = _tok()
    for j, i in enumerate(keep):
        crop = adm_center_crop(Image.open(source.paths[i]), 8)
        np.testing.assert_array_equal(extracted[j]["views"][0], tok.encode(crop[None]).ravel())


def test_load_extracted_fails_fast(image_dir, tmp_path):
    kwargs = dict(grid_shape=(8, 8), vocab_size=16, num_classes=3)
    with pytest.raises(FileNotFoundError, match=r"train-manifest\.json.*run the extraction"):
        load_extracted(tmp_path, "train", **kwargs)
    _extract(ImageFolderSource(image_dir), tmp_path)
    with pytest.raises(ValueError, match=r"\(8, 8\) grid, but the tokenizer's grid_shape is"):
        load_extracted(tmp_path, "train", **{**kwargs, "grid_shape": (4, 4)})
    with pytest.raises(ValueError, match=r"vocab_size 16, but the tokenizer's vocab_size is 17"):
        load_extracted(tmp_path, "train", **{**kwargs, "vocab_size": 17})
    with pytest.raises(ValueError, match=r"labels in .* must lie in \[0, 2\)"):
        load_extracted(tmp_path, "train", **{**kwargs, "num_classes": 2})
    # Damaged files: one error naming the file and what to do, in extraction and training.
    shard_paths(tmp_path, "train", 2)[0].write_bytes(b"not an array")
    with pytest.raises(ValueError, match=r"train-00002-codes\.npy is not a readable \.npy array "
                                         r"\(not an array of numbers\); delete train-manifest"):
        load_extracted(tmp_path, "train", **kwargs)
    shard_paths(tmp_path, "train", 1)[0].unlink()
    with pytest.raises(FileNotFoundError, match=r"lists train-00001-codes\.npy, which is missing"):
        load_extracted(tmp_path, "train", **kwargs)
    mpath = manifest_path(tmp_path, "train")
    text = mpath.read_text()
    for damaged, match in ((text[:40], r"is not a manifest of extracted codes \(.*\); delete it"),
                           ("[]", r"is not a manifest of extracted codes"),
                           (json.dumps({"format": "lasad_jax.extracted_codes/1"}),
                            r"lacks \['config', 'shards', 'complete'\]; delete it")):
        mpath.write_text(damaged)
        for read in (lambda: load_extracted(tmp_path, "train", **kwargs),
                     lambda: _extract(ImageFolderSource(image_dir), tmp_path),
                     lambda: _extract(ImageFolderSource(image_dir), tmp_path, split="val")):
            with pytest.raises(ValueError, match=rf"train-manifest\.json {match}"):
                read()

# ---------------------------------------------------------------- training on extracted codes


@pytest.fixture
def extracted(image_dir, tmp_path):
    """The config, the source and each image's two views as flat token rows."""
    config = DataConfig(
        name="extracted", image_source="imagefolder", image_dir=str(image_dir.parent),
        codes_dir=str(tmp_path / "codes"), augment="flip", shard_size=3, extract_batch_size=4,
        num_classes=3)
    extract_split(config, _tok(), "train")
    source = build_source(config, "train", _tok())
    views = np.stack([source[i]["views"] for i in range(len(source))])  # [7, 2, 64]
    return config, source, views


def _identify(views, tokens):
    """(image, view) of each token row; views are unique across the fixture's images."""
    hits = np.all(views[None] == tokens[:, None, None], axis=-1)  # [B, 7, 2]
    assert (hits.reshape(len(tokens), -1).sum(1) == 1).all()
    image, view = np.nonzero(hits)[1:]
    return image, view


def test_extracted_source_reads_across_shards(extracted):
    _, source, views = extracted
    assert isinstance(source, ExtractedSource) and len(source) == 7 and source.num_views == 2
    assert views.dtype == np.int32 and source[6]["label"].dtype == np.int32
    rows = source.rows(2, 7)
    np.testing.assert_array_equal(rows["tokens"], views[2:7, 0])
    batches = list(eval_batches(source, batch_size=4))
    np.testing.assert_array_equal(batches[1]["mask"], [1, 1, 1, 0])
    np.testing.assert_array_equal(batches[0]["tokens"], views[:4, 0])
    with pytest.raises(IndexError, match=r"index 7 out of range for 7"):
        source[7]


def test_train_iterator_draws_one_view_per_epoch(extracted):
    _, source, views = extracted
    labels = np.array([int(source[i]["label"]) for i in range(7)])
    it = train_iterator(source, batch_size=7, seed=0)
    epochs = [next(it) for _ in range(8)]  # batch == dataset: one batch per epoch
    choice = np.zeros((8, 7), int)
    for e, batch in enumerate(epochs):
        assert batch["tokens"].shape == (7, 64) and batch["tokens"].dtype == np.int32
        image, view = _identify(views, batch["tokens"])
        assert sorted(image) == list(range(7))
        np.testing.assert_array_equal(batch["label"], labels[image])
        choice[e, image] = view
    assert (choice.min(0) != choice.max(0)).any()  # view choices change across epochs
    again = train_iterator(source, batch_size=7, seed=0)
    for batch in epochs:
        np.testing.assert_array_equal(next(again)["tokens"], batch["tokens"])
    other = train_iterator(source, batch_size=7, seed=1)
    assert any(not np.array_equal(next(other)["tokens"], b["tokens"]) for b in epochs)


def test_train_iterator_over_extracted_codes_resumes(extracted):
    _, source, _ = extracted
    it = train_iterator(source, batch_size=3, seed=5)
    [next(it) for _ in range(4)]
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    fresh = train_iterator(source, batch_size=3, seed=5)
    fresh.set_state(state)
    for batch in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["tokens"], batch["tokens"])
        np.testing.assert_array_equal(got["label"], batch["label"])


def test_processes_read_disjoint_slices_that_cover_the_data(extracted, monkeypatch):
    _, source, views = extracted
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    seen = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        it = train_iterator(source, batch_size=1, seed=0)
        n = 4 if p == 0 else 3  # images 0, 2, 4, 6 and 1, 3, 5
        image, _ = _identify(views, np.concatenate([next(it)["tokens"] for _ in range(n)]))
        seen.append(set(image.tolist()))
    assert seen == [{0, 2, 4, 6}, {1, 3, 5}]


@pytest.mark.parametrize("mode", ["extract", "reference_stats"])
def test_dataset_jobs_refuse_several_processes(monkeypatch, mode):
    """Every process would walk the whole dataset, and write one shared file in turn.
    Refused before the job is imported; the other modes pass this check."""
    import lasad_jax.jobs as jobs

    monkeypatch.setattr(jobs.jax, "process_count", lambda: 4)
    with pytest.raises(ValueError, match=f"--mode={mode} runs in one process, not 4: start"):
        jobs.run_job(None, mode, "/tmp/unused")
    with pytest.raises(ValueError, match="unknown mode"):  # past the check
        jobs.run_job(None, "nope", "/tmp/unused")
