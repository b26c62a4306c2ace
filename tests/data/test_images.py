"""Image sources for code extraction: ADM centre crop, ImageFolder, tfds ImageNet, factory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lasad_jax.data.image_batches import DigitImages, image_train_iterator
from lasad_jax.data.images import (
    CorruptImageError,
    ImageFolderSource,
    TfdsImagenetSource,
    adm_center_crop,
    build_image_source,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)

# ---------------------------------------------------------------- ADM centre crop


def _two_colour(width: int, height: int, split_x: int | None = None, split_y: int | None = None):
    arr = np.empty((height, width, 3), np.uint8)
    arr[:] = BLUE
    if split_x is not None:
        arr[:, :split_x] = RED
    if split_y is not None:
        arr[:split_y] = RED
    return Image.fromarray(arr)


def test_adm_crop_of_a_wide_two_colour_image_has_a_known_boundary():
    # 40x20, red left of x=20. BOX halving (short side 20 >= 2*10) gives 20x10 with the
    # boundary at x=10 exactly; the resize is then the identity and the crop starts at
    # x=(20-10)//2=5: five red columns, then five blue ones.
    out = adm_center_crop(_two_colour(40, 20, split_x=20), 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :5], np.broadcast_to(RED, (10, 5, 3)))
    np.testing.assert_array_equal(out[:, 5:], np.broadcast_to(BLUE, (10, 5, 3)))


def test_adm_crop_of_a_tall_image_resizes_then_crops_vertically():
    # 15x30, red above y=15: no halving (15 < 20); bicubic to 10x20 puts the boundary at
    # y=10 and the crop starts at y=5, so rows 0..4 are red and 5..9 blue. Bicubic blurs
    # the rows next to the boundary; rows out of its reach are the pure colours.
    out = adm_center_crop(_two_colour(15, 30, split_y=15), 10).astype(int)
    assert out.shape == (10, 10, 3)
    assert np.abs(out[:3] - RED).max() <= 1 and np.abs(out[7:] - BLUE).max() <= 1
    assert (out[4, :, 0] > out[5, :, 0]).all()  # the boundary sits between rows 4 and 5


def test_adm_crop_halves_with_box_while_the_short_side_is_twice_the_size(monkeypatch):
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        calls.append((tuple(size), resample))
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = adm_center_crop(Image.new("RGB", (64, 48)), 10)
    assert out.shape == (10, 10, 3)
    assert calls == [((32, 24), Image.BOX), ((16, 12), Image.BOX), ((13, 10), Image.BICUBIC)]


def test_box_halving_averages_a_pixel_checkerboard_to_grey():
    # Bicubic alone would alias a 1-pixel checkerboard; BOX halving averages it first.
    board = ((np.indices((40, 40)).sum(0) % 2) * 255).astype(np.uint8)
    out = adm_center_crop(board, 10)  # grey input (a numpy array) -> RGB output
    assert out.shape == (10, 10, 3)
    assert np.abs(out.astype(int) - 127.5).max() <= 1


def test_adm_crop_converts_to_rgb_and_checks_size():
    rgba = Image.new("RGBA", (12, 12), (10, 20, 30, 40))
    np.testing.assert_array_equal(adm_center_crop(rgba, 12), np.full((12, 12, 3), [10, 20, 30]))
    with pytest.raises(ValueError, match=r"size must be a positive int, got 0"):
        adm_center_crop(rgba, 0)

# ---------------------------------------------------------------- ImageFolder


def _solid(path, size, colour):
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "train"
    for name in ("c_eel", "a_dog", "b_cat"):  # created out of order on purpose
        (root / name).mkdir(parents=True)
    _solid(root / "b_cat" / "2.png", (9, 7), (0, 1, 2))
    _solid(root / "b_cat" / "1.PNG", (5, 11), (0, 1, 1))
    _solid(root / "a_dog" / "x.png", (13, 6), (0, 0, 0))
    _solid(root / "c_eel" / "z.JPG", (17, 10), (200, 200, 200))
    _solid(root / "c_eel" / "y.jpeg", (8, 8), (100, 100, 100))
    (root / "c_eel" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_follow_sorted_class_names(folder):
    source = ImageFolderSource(folder)
    assert source.class_names == ["a_dog", "b_cat", "c_eel"]
    assert len(source) == 5
    names = [p.name for p in source.paths]
    assert names == ["x.png", "1.PNG", "2.png", "y.jpeg", "z.JPG"]
    assert [source[i]["label"] for i in range(5)] == [0, 1, 1, 2, 2]
    item = source[2]
    assert item["image"].shape == (7, 9, 3) and item["image"].dtype == np.uint8
    np.testing.assert_array_equal(item["image"][0, 0], [0, 1, 2])
    assert item["path"].endswith("2.png")
    assert source[4]["image"].shape == (10, 17, 3)
    assert "images=5" in repr(source)


def test_image_folder_errors_name_the_path(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match=r"nowhere.* does not exist"):
        ImageFolderSource(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.* holds no class sub-directories"):
        ImageFolderSource(tmp_path / "empty")
    (folder / "d_fox").mkdir()
    (folder / "d_fox" / "readme.md").write_text("")
    with pytest.raises(FileNotFoundError, match=r"d_fox.* holds no images with extensions"):
        ImageFolderSource(folder)


def test_a_corrupt_image_raises_naming_the_file(folder):
    (folder / "a_dog" / "y_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    source = ImageFolderSource(folder)
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*a_dog/y_bad\.png"):
        source[1]
    assert source[0]["label"] == 0 and source[2]["label"] == 1


def test_build_image_source_picks_the_source_by_name(folder):
    assert len(build_image_source("imagefolder", "train", image_dir=str(folder.parent))) == 5
    with pytest.raises(FileNotFoundError, match=r"val.* does not exist"):
        build_image_source("imagefolder", "val", image_dir=str(folder.parent))
    with pytest.raises(ValueError,
                       match=r"image_source must be one of imagefolder, tfds; got 'lmdb'"):
        build_image_source("lmdb", "train")
    with pytest.raises(ValueError, match=r"config\.data\.image_dir must name a directory"):
        build_image_source("imagefolder", "train", image_dir="")


def test_image_iterator_crops_flips_and_resumes():
    source = DigitImages("train", scale=2, val_fraction=0.1, seed=0)
    it = image_train_iterator(source, image_size=16, batch_size=4, seed=1)
    first = next(it)["image"]
    assert first.shape == (4, 16, 16, 3) and first.dtype == np.uint8
    state = it.get_state()
    expected = [next(it)["image"] for _ in range(2)]
    again = image_train_iterator(source, image_size=16, batch_size=4, seed=1)
    again.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(again)["image"], want)

class _Numbered:
    """Flat 16 px images whose grey level is their index, so a batch shows which it holds
    (the crop leaves a 16 px image as it is and a flip leaves a flat one)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict:
        return {"image": np.full((16, 16, 3), index, np.uint8), "label": 0}


def test_each_process_reads_its_own_slice_of_the_images():
    # Two "processes" with batch 5 (their share of 10): one batch is one pass over a slice.
    seen = []
    for index in range(2):
        it = image_train_iterator(_Numbered(), image_size=16, batch_size=5, seed=3,
                                  process_index=index, process_count=2)
        first = next(it)["image"][:, 0, 0, 0].tolist()
        assert sorted(first) == list(range(index, 10, 2))  # its slice, shuffled
        assert sorted(next(it)["image"][:, 0, 0, 0].tolist()) == sorted(first)
        seen.append(set(first))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(10))
    alone = image_train_iterator(_Numbered(), image_size=16, batch_size=10, seed=3)
    assert sorted(next(alone)["image"][:, 0, 0, 0].tolist()) == list(range(10))
    with pytest.raises(ValueError, match=r"process 15 of 20 gets no images"):
        image_train_iterator(_Numbered(), image_size=16, batch_size=1, seed=3,
                             process_index=15, process_count=20)
    with pytest.raises(ValueError, match=r"process_index must be in \[0, process_count=2\)"):
        image_train_iterator(_Numbered(), image_size=16, batch_size=1, seed=3,
                             process_index=2, process_count=2)


# ---------------------------------------------------------------- tfds ImageNet


def test_tfds_source_says_which_tars_go_where(tmp_path):
    manual = tmp_path / "manual"
    with pytest.raises(FileNotFoundError) as info:
        TfdsImagenetSource("train", tmp_path / "tfds", manual)
    text = str(info.value)
    command = (f"tfds build imagenet2012 --data_dir={tmp_path / 'tfds'} "
               f"--manual_dir={manual} --file_format=array_record")
    for needed in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", str(manual), command):
        assert needed in text
    with pytest.raises(ValueError, match=r"split must be one of train, val, validation"):
        TfdsImagenetSource("test", tmp_path / "tfds", manual)


def test_tfds_source_reads_mocked_imagenet(tmp_path):
    import tensorflow_datasets as tfds

    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")  # preparation is mocked out
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        source = build_image_source("tfds", "val", tfds_data_dir=str(tmp_path / "tfds"),
                                    manual_dir=str(manual))
        assert len(source) == 3 and len(source.class_names) == 1000
        assert source.class_names[0] == "n01440764"
        for i in range(3):
            item = source[i]
            assert item["image"].dtype == np.uint8 and item["image"].ndim == 3
            assert item["image"].shape[2] == 3
            assert 0 <= item["label"] < 1000 and isinstance(item["label"], int)
            assert "tfds imagenet2012/validation" in item["path"]
