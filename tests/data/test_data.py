"""Datasets and batching: digits splits, the code file format, and the grain pipeline."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from lasad_jax.data import (
    RANGE_CHECK_ROWS,
    DataConfig,
    TokenSource,
    build_source,
    code_paths,
    eval_batches,
    load_codes,
    load_digits,
    train_iterator,
    write_codes,
)
from lasad_jax.tokenizers import IntensityTokenizer

# ---------------------------------------------------------------- digits


def test_digits_splits_are_disjoint_cover_everything_and_are_stratified():
    train_x, train_y = load_digits("train")
    val_x, val_y = load_digits("val")
    assert len(train_y) + len(val_y) == 1797
    assert train_x.shape == (len(train_y), 8, 8, 1) and val_x.shape == (len(val_y), 8, 8, 1)
    assert train_x.dtype == val_x.dtype == np.uint8
    assert train_y.dtype == val_y.dtype == np.int32
    assert 170 <= len(val_y) <= 190
    assert set(np.unique(train_y)) == set(np.unique(val_y)) == set(range(10))
    # Every (image, label) pair of the full dataset appears in exactly one split.
    from sklearn.datasets import load_digits as sklearn_digits

    full = sklearn_digits()
    def key(x, y):
        return bytes(x.astype(np.uint8)) + bytes([y])
    expected = sorted(key(x, y) for x, y in zip(full.images, full.target))
    def ink(images):
        return (images.astype(np.int32) * 32 + 255) // 510
    got = sorted(key(x, y) for x, y in zip(ink(np.concatenate([train_x, val_x]))[..., 0],
                                           np.concatenate([train_y, val_y])))
    assert got == expected


def test_digits_values_are_ink_counts_stretched_to_grey():
    images, _ = load_digits("train")
    allowed = {(2 * x * 255 + 16) // 32 for x in range(17)}
    assert set(np.unique(images).tolist()) <= allowed
    assert images.min() == 0 and images.max() == 255 and 128 in allowed


def test_digits_split_depends_on_seed_only():
    a, _ = load_digits("val", seed=3)
    b, _ = load_digits("val", seed=3)
    c, _ = load_digits("val", seed=4)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert len(load_digits("val", val_fraction=0.5)[1]) in range(880, 920)


def test_digits_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"split must be one of train, val; got 'test'"):
        load_digits("test")
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\), got 0"):
        load_digits("val", val_fraction=0)
    with pytest.raises(ValueError, match=r"val_fraction=0.001 leaves the train or the val split"):
        load_digits("val", val_fraction=0.001)

# ---------------------------------------------------------------- code files


def _codes(n=7, h=2, w=3, vocab=50, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (n, h, w)), rng.integers(0, classes, n)


def test_codes_round_trip_as_memmaps(tmp_path):
    codes, labels = _codes()
    paths = write_codes(tmp_path / "new", "train", codes, labels)
    assert paths == code_paths(tmp_path / "new", "train")
    got_codes, got_labels = load_codes(
        tmp_path / "new", "train", grid_shape=(2, 3), vocab_size=50, num_classes=4
    )
    assert isinstance(got_codes, np.memmap) and isinstance(got_labels, np.memmap)
    assert got_codes.dtype == np.int16 and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_labels, labels)


def test_large_codes_are_stored_as_int32(tmp_path):
    codes = np.full((1, 1, 1), 40_000)
    write_codes(tmp_path, "train", codes, np.zeros(1, int))
    got, _ = load_codes(tmp_path, "train", grid_shape=(1, 1), vocab_size=65536, num_classes=1)
    assert got.dtype == np.int32 and got[0, 0, 0] == 40_000


def test_load_codes_failure_modes(tmp_path):
    kwargs = dict(grid_shape=(2, 3), vocab_size=50, num_classes=4)
    with pytest.raises(FileNotFoundError, match=r"nowhere.* does not exist; .*extraction"):
        load_codes(tmp_path / "nowhere", "train", **kwargs)
    with pytest.raises(FileNotFoundError, match=r"missing .*train_codes\.npy.*extraction step"):
        load_codes(tmp_path, "train", **kwargs)
    codes, labels = _codes()
    write_codes(tmp_path, "train", codes, labels)
    (tmp_path / "train_labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing .*train_labels\.npy"):
        load_codes(tmp_path, "train", **kwargs)
    with pytest.raises(ValueError, match=r"split must be a non-empty name"):
        load_codes(tmp_path, "", **kwargs)

    write_codes(tmp_path, "train", codes, labels)
    with pytest.raises(ValueError, match=r"shape \[N, 4, 4\] .*grid_shape.*got \(7, 2, 3\)"):
        load_codes(tmp_path, "train", **{**kwargs, "grid_shape": (4, 4)})
    with pytest.raises(ValueError, match=r"codes in .* must lie in \[0, 10\) \(vocab_size=10\)"):
        load_codes(tmp_path, "train", **{**kwargs, "vocab_size": 10})
    with pytest.raises(ValueError, match=r"labels in .* must lie in \[0, 1\) \(num_classes=1\)"):
        load_codes(tmp_path, "train", **{**kwargs, "num_classes": 1})

    np.save(tmp_path / "train_labels.npy", labels[:5])
    with pytest.raises(ValueError, match=r"has 7 rows but .*train_labels\.npy has 5; .*same N"):
        load_codes(tmp_path, "train", **kwargs)
    with pytest.raises(ValueError, match=r"codes and labels must have the same N, got 7 and 5"):
        write_codes(tmp_path, "val", codes, labels[:5])
    # A damaged file is named, not numpy's bare message (which speaks of pickles).
    for damaged in (b"garbage", np.lib.format.MAGIC_PREFIX + b"\x01\x00"):
        (tmp_path / "train_labels.npy").write_bytes(damaged)
        with pytest.raises(ValueError, match=r"train_labels\.npy is not a readable \.npy array "
                                             r"\(.*\); write it again"):
            load_codes(tmp_path, "train", **kwargs)


def test_range_check_reads_only_the_leading_rows(tmp_path):
    codes = np.zeros((RANGE_CHECK_ROWS + 1, 1, 1), np.int32)
    codes[-1] = 99  # out of range, but beyond the checked sample
    write_codes(tmp_path, "train", codes, np.zeros(len(codes), int))
    got, _ = load_codes(tmp_path, "train", grid_shape=(1, 1), vocab_size=10, num_classes=1)
    assert got[-1, 0, 0] == 99

# ---------------------------------------------------------------- pipeline


def test_token_source_flattens_in_raster_order():
    codes, labels = _codes()
    source = TokenSource(codes, labels)
    assert len(source) == 7 and source.seq_len == 6
    flat = codes.reshape(7, -1)
    for i in range(7):
        item = source[i]
        assert item["tokens"].dtype == np.int32 and item["tokens"].shape == (6,)
        np.testing.assert_array_equal(item["tokens"], flat[i])
        assert item["label"].dtype == np.int32 and item["label"] == labels[i]
    np.testing.assert_array_equal(TokenSource(flat, labels)[3]["tokens"], flat[3])
    with pytest.raises(ValueError, match=r"same N, got 7 and 6"):
        TokenSource(codes, labels[:6])
    with pytest.raises(ValueError, match=r"tokens must be an array \[N, h, w\] or \[N, L\]"):
        TokenSource(codes.reshape(-1), labels)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_train_iterator_shapes_determinism_and_epochs():
    n = 23
    tokens = np.arange(n * 4).reshape(n, 2, 2)
    source = TokenSource(tokens, np.arange(n))
    it = train_iterator(source, batch_size=5, seed=1)
    assert isinstance(it, grain.DatasetIterator)
    batches = _take(it, 9)  # 45 examples: runs into the second epoch
    for b in batches:
        assert b["tokens"].shape == (5, 4) and b["tokens"].dtype == np.int32
        assert b["label"].shape == (5,) and b["label"].dtype == np.int32
        np.testing.assert_array_equal(b["tokens"], tokens.reshape(n, 4)[b["label"]])
    first_epoch = np.concatenate([b["label"] for b in batches])[:n]
    assert sorted(first_epoch) == list(range(n)) and list(first_epoch) != list(range(n))
    _assert_same(batches, _take(train_iterator(source, batch_size=5, seed=1), 9))
    other = _take(train_iterator(source, batch_size=5, seed=2), 9)
    assert any(not np.array_equal(a["label"], b["label"]) for a, b in zip(batches, other))


def test_train_iterator_resumes_from_saved_state():
    source = TokenSource(*_codes(n=31))
    it = train_iterator(source, batch_size=4, seed=0)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 2)
    fresh = train_iterator(source, batch_size=4, seed=0)
    fresh.set_state(state)
    _assert_same(_take(fresh, 2), expected)


def test_eval_batches_count_every_example_once():
    n, bs = 11, 4
    codes, labels = _codes(n=n)
    batches = list(eval_batches(TokenSource(codes, labels), batch_size=bs))
    assert len(batches) == 3
    for b in batches:
        assert b["tokens"].shape == (bs, 6) and b["tokens"].dtype == np.int32
        assert b["label"].shape == (bs,) and b["label"].dtype == np.int32
        assert b["mask"].shape == (bs,) and b["mask"].dtype == np.float32
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 1, 0])
    assert sum(b["mask"].sum() for b in batches) == n
    def real(key):
        return np.concatenate([b[key][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(real("tokens"), codes.reshape(n, -1))
    np.testing.assert_array_equal(real("label"), labels)
    exact = list(eval_batches(TokenSource(codes[:8], labels[:8]), batch_size=bs))
    assert len(exact) == 2 and all(b["mask"].all() for b in exact)


def test_batch_size_must_be_positive():
    source = TokenSource(*_codes())
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got 0"):
        train_iterator(source, batch_size=0, seed=0)
    with pytest.raises(ValueError, match=r"batch_size must be a positive int, got -1"):
        next(eval_batches(source, batch_size=-1))


def _data_config(**overrides) -> DataConfig:
    fields = dict(name="digits", val_fraction=0.1, seed=0, codes_dir="", num_classes=10)
    fields.update(overrides)
    return DataConfig(**fields)


def test_build_source_for_digits_uses_the_tokenizer():
    tok = IntensityTokenizer(levels=17, image_size=(8, 8))
    source = build_source(_data_config(), "val", tok)
    images, labels = load_digits("val")
    assert len(source) == len(labels) and source.seq_len == 64
    np.testing.assert_array_equal(source[5]["tokens"], tok.encode(images[5:6]).reshape(-1))
    with pytest.raises(ValueError, match=r"tokenizer expects \(16, 16, 1\)"):
        build_source(_data_config(), "val", IntensityTokenizer(17, (16, 16)))
    # Too few classes for the labels: refused with the config, before any source is built.
    with pytest.raises(ValueError, match=r"data.num_classes must be at least 10, the classes "
                                         r"of the digits dataset \(data.name='digits'\); got 5"):
        _data_config(num_classes=5)


def test_build_source_for_codes_checks_against_the_tokenizer(tmp_path):
    tok = IntensityTokenizer(levels=50, image_size=(2, 3))
    codes, labels = _codes()
    write_codes(tmp_path, "train", codes, labels)
    config = _data_config(name="codes", codes_dir=str(tmp_path), num_classes=4)
    source = build_source(config, "train", tok)
    np.testing.assert_array_equal(source[2]["tokens"], codes[2].reshape(-1))
    with pytest.raises(ValueError, match=r"codes of shape \[N, 3, 3\]"):
        build_source(config, "train", IntensityTokenizer(50, (3, 3)))
    with pytest.raises(ValueError, match=r"config\.data\.codes_dir must point at a directory of"):
        build_source(_data_config(name="codes", num_classes=4), "train", tok)
    with pytest.raises(ValueError, match=r"data\.name must be one of \('digits', 'shapes', "
                                         r"'codes', 'extracted'\), got 'imagenet"):
        _data_config(name="imagenet")


def test_tokenizer_validation_scores_a_uniform_subset_not_a_prefix():
    """An image folder lists its images class by class: the first `eval_images` would be
    the first classes only. The subset is uniform, in dataset order, the same each time,
    and every chosen image appears once (the last batch padded and masked)."""
    from lasad_jax.data.image_batches import image_eval_batches, uniform_subset

    class Ordered:  # image i is a flat 16 x 16 image of value i
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return {"image": np.full((16, 16, 3), i, np.uint8)}

    def seen(limit):
        batches = list(image_eval_batches(Ordered(), image_size=8, batch_size=3, limit=limit))
        return [int(b["image"][j, 0, 0, 0]) for b in batches
                for j in np.flatnonzero(b["mask"])]

    chosen = seen(10)
    assert chosen == sorted(set(chosen)) and len(chosen) == 10
    assert chosen == uniform_subset(40, 10, seed=0).tolist() == seen(10)
    assert chosen != list(range(10)) and max(chosen) >= 20  # not the first classes
    assert seen(None) == seen(100) == list(range(40))
