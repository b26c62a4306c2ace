"""The typed run configuration: every field settable, every problem reported at once and
naming the field, for both tasks and every mode, before anything is built."""

from __future__ import annotations

import dataclasses

import jax
import pytest

from lasad_jax.config import (
    MODES,
    GeneratorRun,
    TokenizerRun,
    default_config,
    parse,
)
from lasad_jax.models import ModelConfig
from lasad_jax.validation import ConfigError, block_from_mapping
from tests.helpers import ROOT, flag_config, load_config, tiny_demo_config, tiny_vq_config

CONFIGS = ("demo", "shapes", "imagenet256", "vq_demo", "vq_imagenet256")


def demo(**fields):
    config = load_config("demo")
    for path, value in fields.items():
        block, _, name = path.partition("__")
        if name:
            config[block][name] = value
        else:
            config[block] = value
    return config


BAD_CONFIGS = [
    # (what, config fields, mode, words the error must contain)
    ("unknown mixer", {"model__mixer": "mamba"}, "train", ["config.model.mixer", "softmax"]),
    ("unknown preset", {"model__preset": "XXXL"}, "train", ["config.model.preset", "3B"]),
    ("heads do not divide dim", {"model__dim": 90}, "train", ["config.model.dim", "num_heads"]),
    ("unknown dtype", {"model__dtype": "fp8"}, "train", ["config.model.dtype", "bfloat16"]),
    ("unknown impl", {"model__impl": "triton"}, "train", ["config.model.impl", "chunked"]),
    ("unknown remat policy", {"model__remat": "all"}, "train", ["config.model.remat", "'dots'"]),
    ("pallas for softmax", {"model__mixer": "softmax", "model__impl": "pallas"}, "train",
     ["config.model.impl", "lasad"]),
    ("image size vs tokenizer stride", {"data__name": "codes", "data__codes_dir": "/x",
                                        "tokenizer": {"name": "vq16", "image_size": (250, 250),
                                                      "checkpoint": "", "codebook_size": 16384}},
     "train", ["config.tokenizer.image_size", "multiple of 16"]),
    ("digits need 8x8", {"tokenizer__image_size": (16, 16)}, "train",
     ["config.tokenizer.image_size", "(8, 8)"]),
    # Not "set channels=1" for a tokenizer whose channels come from its weights.
    ("a VQ tokenizer on grey digits", {"tokenizer": {"name": "vq16", "image_size": (16, 16),
                                                     "checkpoint": "", "codebook_size": 64}},
     "train", ["config.tokenizer.name='vq16' reads RGB images", "tokenizer.name='intensity'"]),
    ("unknown dataset", {"data__name": "mnist"}, "train", ["config.data.name", "extracted"]),
    ("missing data directory", {"data__name": "extracted", "data__codes_dir": "/no/such"},
     "train", ["config.data.codes_dir", "--mode=extract"]),
    ("missing tokenizer checkpoint", {"tokenizer": {"name": "vq16", "image_size": (256, 256),
                                                    "checkpoint": "/no/vq", "codebook_size":
                                                    16384}, "data__name": "codes",
                                      "data__codes_dir": "/x"},
     "sample", ["config.tokenizer.checkpoint", "llamagen_vq"]),
    ("class id out of range", {"sample__classes": (3, 12)}, "sample",
     ["config.sample.classes", "[0, 10)"]),
    ("top_k above the vocabulary", {"sample__top_k": 50}, "sample",
     ["config.sample.top_k", "17 tokens"]),
    ("negative guidance", {"sample__cfg_scale": -1.0}, "sample", ["config.sample", "cfg_scale",
                                                                  ">= 0"]),
    ("zero temperature", {"sample__temperature": 0.0}, "sample", ["temperature", "> 0"]),
    ("top_p above 1", {"sample__top_p": 1.5}, "sample", ["top_p", "(0, 1]"]),
    ("batch vs devices", {"mesh": {"data": 2}}, "train", ["config.mesh", "JAX sees 1"]),
    ("two fill axes", {"mesh": {"data": -1, "fsdp": -1}}, "train", ["config.mesh",
                                                                    "at most one"]),
    ("unknown mesh axis", {"mesh": {"model": 2}}, "train", ["config.mesh", "'tensor'"]),
    ("negative lr", {"optimizer__lr": -1e-4}, "train", ["config.optimizer.lr", "> 0"]),
    ("unknown schedule", {"optimizer__schedule": "step"}, "train",
     ["config.optimizer.schedule", "cosine"]),
    ("beta out of range", {"optimizer__b2": 1.0}, "train", ["config.optimizer.b2", "[0, 1)"]),
    ("no run length", {"num_steps": 0}, "train", ["config.num_steps", "num_epochs"]),
    ("unknown nonfinite policy", {"train__nonfinite": "ignore"}, "train",
     ["config.train.nonfinite", "skip"]),
    ("no micro-batch", {"train__grad_accum_steps": 0}, "train",
     ["config.train.grad_accum_steps", ">= 1"]),
    ("micro-batches of unequal size", {"train__grad_accum_steps": 3}, "train",
     ["config.train.grad_accum_steps=3", "divide batch_size=64"]),
    ("keep no checkpoint", {"train__keep_checkpoints": 0}, "train",
     ["config.train.keep_checkpoints", ">= 1"]),
    ("missing Inception weights", {"eval__inception": "/no/inception.npz"}, "evaluate",
     ["config.eval.inception", "pt_inception-2015-12-05"]),
    ("no samples", {"eval__num_samples": 0}, "evaluate",
     ["config.eval.num_samples", "positive int"]),
    ("infinite learning rate", {"optimizer__lr": float("inf")}, "train",
     ["config.optimizer.lr must be > 0, got inf"]),
    # Every seed takes what grain's shuffle and numpy take; jax.random.key overflows
    # past 2**63, and grain refuses a negative seed only when the data is first read.
    ("samples named into another directory", {"sample__name": "../elsewhere"}, "sample",
     ["config.sample.name must be a non-empty file name without '/'", "'../elsewhere'"]),
    ("an evaluation named as a path", {"eval__name": "a/b"}, "evaluate",
     ["config.eval.name", "'a/b'"]),
    ("fewer classes than the digits have", {"data__num_classes": 5}, "train",
     ["config.data.num_classes must be at least 10, the classes of the digits dataset"]),
    ("negative seed", {"seed": -1}, "train", ["config.seed must be an int in [0, 2**32)"]),
    ("seed past 32 bits", {"seed": 2**32}, "train", ["config.seed", "[0, 2**32)"]),
    ("negative data seed", {"data__seed": -1}, "train", ["config.data.seed", "[0, 2**32)"]),
    ("sampling seed past 64 bits", {"sample__seed": 2**63}, "sample",
     ["config.sample.seed", "[0, 2**32)"]),
    ("negative evaluation seed", {"eval__seed": -1}, "evaluate",
     ["config.eval.seed", "[0, 2**32)"]),
]


def test_the_largest_seed_is_accepted():
    parse(demo(seed=2**32 - 1, data__seed=2**32 - 1, sample__seed=2**32 - 1), "sample")


@pytest.mark.parametrize("what, fields, mode, words", BAD_CONFIGS,
                         ids=[case[0] for case in BAD_CONFIGS])
def test_bad_configs_fail_before_any_work_naming_the_field(what, fields, mode, words):
    config = demo(**fields)
    with pytest.raises(ValueError) as err:
        parse(config, mode)
    problems = str(err.value).split("\n  - ")[1:]
    hits = [p for p in problems if all(w in p for w in words)]
    assert len(hits) == 1, (what, problems)
    assert "\n" not in hits[0]  # each problem is one line


def test_batch_not_divisible_by_devices(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    config = demo(batch_size=20)
    with pytest.raises(ValueError, match=r"config.batch_size=20 must be a multiple of 8"):
        parse(config, "train")


def test_micro_batches_must_split_over_the_devices(monkeypatch):
    """Each micro-batch is split over the data-parallel devices, as a batch is."""
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    config = demo(batch_size=64, train__grad_accum_steps=16)
    with pytest.raises(ValueError, match=r"config.train.grad_accum_steps=16 leaves "
                       r"micro-batches of 4 examples \(batch_size=64\), which must be a "
                       r"multiple of 8"):
        parse(config, "train")
    run = parse(demo(batch_size=64, train__grad_accum_steps=8), "train")
    assert run.train.grad_accum_steps == 8


def test_every_problem_of_every_block_at_once():
    config = tiny_demo_config()
    config.model.update(mixer="mamba", dim=90)
    config.optimizer.lr = -1.0
    config.sample.top_p = 2.0
    config.train.keep_checkpoints = 0
    config.data.num_classes = 0
    config.mesh.update(data=-1, fsdp=-1)
    with pytest.raises(ConfigError) as err:
        parse(config, "train")
    fields = ("config.model.mixer", "config.model.dim", "config.optimizer.lr",
              "config.sample.top_p", "config.train.keep_checkpoints",
              "config.data.num_classes", "config.mesh")
    for field in fields:
        assert sum(p.startswith(field) for p in err.value.problems) >= 1, (field, err.value)
    assert str(err.value).startswith("the config cannot run:\n  - ")
    assert all("\n" not in p for p in err.value.problems)


def test_the_tokenizer_task_is_checked_as_fully_as_the_generator():
    config = tiny_vq_config()
    assert isinstance(parse(config, "train"), TokenizerRun)
    config.optimizer.lr = -1e-4  # used to train, and export a broken tokenizer, with exit 0
    config.train.update(image_size=20, log_every=0)
    config.loss.update(perceptual_weight=1.0, disc_loss="wgan")
    config.vq.codebook_size = 0
    config.batch_size = 0
    with pytest.raises(ConfigError) as err:
        parse(config, "train")
    found = err.value.problems
    for words in (["config.optimizer.lr", "> 0"], ["config.train.image_size=20", "multiple of 8"],
                  ["config.train.log_every", ">= 1"], ["config.loss.perceptual_weights"],
                  ["config.loss.disc_loss", "hinge"], ["config.vq.codebook_size"],
                  ["config.batch_size", ">= 1"]):
        assert any(all(w in p for w in words) for p in found), (words, found)
    with pytest.raises(ConfigError, match="does not apply to a tokenizer config"):
        parse(tiny_vq_config(), "sample")


def test_tokenizer_fields_that_fail_only_inside_the_step_are_refused():
    """Each of these parsed, then gave NaN losses or an XLA shape error in the first step."""
    config = tiny_vq_config()  # 16 px, disc_layers 1
    config.loss.disc_layers = 3  # 16 / 8 - 2 = 0: empty logits, NaN from step 1
    config.vq.update(in_channels=1, out_channels=4)
    with pytest.raises(ConfigError) as err:
        parse(config, "train")
    found = err.value.problems
    for words in (["config.loss.disc_layers=3", "train.image_size=16", "0 pixels wide",
                   "disc_layers <= 2", "at least 24"],
                  ["config.vq.in_channels must be 3", "got 1"],
                  ["config.vq.out_channels must be 3", "got 4"]):
        assert any(all(w in p for w in words) for p in found), (words, found)
    config.loss.disc_layers = 2  # 16 / 4 - 2 = 2 pixels
    config.vq.update(in_channels=3, out_channels=3)
    assert parse(config, "train").loss.disc_layers == 2


@pytest.mark.parametrize("mesh, refused", [({"data": 2, "tensor": 4}, True),
                                           ({"data": 1, "tensor": -1}, True),
                                           ({"data": 2, "fsdp": 4}, False)])
def test_the_tokenizer_mesh_is_data_parallel(monkeypatch, mesh, refused):
    """Its weights are replicated: fsdp splits only its batch, tensor nothing at all."""
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    config = tiny_vq_config()
    config.mesh.update(mesh)
    if not refused:
        assert parse(config, "train").mesh.fsdp == 4
        return
    with pytest.raises(ConfigError, match=r"config\.mesh\.tensor=-?\d gives a tensor axis of "
                       r"\d devices, but the tokenizer is data-parallel only"):
        parse(config, "train")
    config = tiny_vq_config()
    config.task = "classifier"
    with pytest.raises(ConfigError, match=r"config.task must be one of \('generator', "):
        parse(config, "train")


def test_an_unknown_field_is_refused_not_ignored():
    config = tiny_demo_config().to_dict()
    config["trian"] = {"log_every": 1}
    config["optimizer"]["learning_rate"] = 1.0
    with pytest.raises(ConfigError) as err:
        parse(config, "train")
    assert any("unknown fields ['trian']" in p for p in err.value.problems)
    assert any("config.optimizer has unknown fields ['learning_rate']" in p
               for p in err.value.problems)


@pytest.mark.parametrize("task", ["generator", "tokenizer"])
def test_default_config_holds_every_field_at_its_typed_default(task):
    """Every field of every block is in the ConfigDict (so settable from the command
    line), at the default of its block, and reads back into the same block."""
    config, run = default_config(task), {"generator": GeneratorRun,
                                         "tokenizer": TokenizerRun}[task]()
    assert set(config.keys()) == {f.name for f in dataclasses.fields(run)}
    for field in dataclasses.fields(run):
        block = getattr(run, field.name)
        if isinstance(block, ModelConfig):
            model = ModelConfig.from_config(config.model.to_dict(), vocab_size=block.vocab_size,
                                            grid=block.grid, num_classes=block.num_classes)
            assert model == block
        elif dataclasses.is_dataclass(block):
            names = {f.name for f in dataclasses.fields(block)}
            assert set(config[field.name].keys()) == names, field.name
            assert block_from_mapping(type(block), field.name,
                                      config[field.name].to_dict()) == block
        else:
            assert config[field.name] == block


def test_none_fields_are_placeholders_set_from_the_command_line(tmp_path):
    """`model.chunk_size` and the preset's `num_layers` default to None; the flags still
    set them, with their type checked."""
    for split in ("train", "val"):  # the folders --mode=extract reads
        (tmp_path / split).mkdir()
    imagenet = f"--config={ROOT / 'configs' / 'imagenet256.py'}"
    config = flag_config(imagenet, "--config.model.chunk_size=64",
                         "--config.model.num_layers=2", f"--config.data.codes_dir={tmp_path}",
                         "--config.data.image_source=imagefolder",
                         f"--config.data.image_dir={tmp_path}",
                         f"--config.tokenizer.checkpoint={tmp_path}")
    assert config.model.chunk_size == 64 and config.model.num_layers == 2
    run = parse(config, "extract")
    assert (run.model.chunk_size, run.model.num_layers, run.model.dim) == (64, 2, 1024)
    with pytest.raises(ConfigError, match="model.chunk_size takes an int, got 'big'"):
        flag_config(imagenet, "--config.model.chunk_size=big")


def test_the_model_is_sized_once_by_the_tokenizer_and_the_data():
    run = parse(load_config("demo"), "train")
    assert (run.model.vocab_size, run.model.grid, run.model.num_classes) == (17, (8, 8), 10)
    assert run.geometry.grid_shape == (8, 8) and run.geometry.vocab_size == 17
    run = parse(load_config("shapes"), "train")
    assert run.model.grid == (16, 16)


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_file_names_the_command_that_runs_it(name):
    import runpy

    module = runpy.run_path(str(ROOT / "configs" / f"{name}.py"))
    assert f"python -m lasad_jax.main --config=configs/{name}.py" in module["__doc__"]


@pytest.mark.parametrize("mode", [m for m in MODES if m != "extract"])
def test_the_demo_parses_for_every_mode(mode):
    run = parse(load_config("demo"), mode)
    assert isinstance(run, GeneratorRun) and run.train.sample_at_end
    with pytest.raises(ConfigError, match="--mode must be one of"):
        parse(load_config("demo"), "serve")


def test_devices_are_asked_only_at_parse(monkeypatch):
    """The batch split is checked once, against the devices JAX sees."""
    monkeypatch.setattr(jax, "device_count", lambda: 3)
    with pytest.raises(ConfigError) as err:
        parse(load_config("demo"), "train")
    assert {p.split("=")[0] for p in err.value.problems} == {
        "config.batch_size", "config.train.eval_batch_size", "config.sample.batch_size"}


def test_the_configuration_page_lists_every_field_with_its_default():
    """docs/configuration.md has a table per block: every field, its type and default."""
    import re

    from lasad_jax import config as config_lib

    text = (ROOT / "docs" / "configuration.md").read_text()
    tables = {}
    for section in re.split(r"\n### ", text.split("## The fields", 1)[1])[1:]:
        heading, body = section.split("\n", 1)
        match = re.search(r"\(`(\w+)`", heading)
        rows = re.findall(r"^\| `(\w+)` \| (\w+) \| `(.*?)` \|", body, re.M)
        tables[match.group(1) if match else heading.strip()] = rows
    run = GeneratorRun()
    expected = {"Top level": {f: getattr(run, f) for f in
                              ("task", "seed", "batch_size", "num_steps", "num_epochs")},
                "ModelConfig": default_config("generator").model.to_dict()}
    for run in (GeneratorRun(), TokenizerRun()):
        for field in dataclasses.fields(run):
            block = getattr(run, field.name)
            if dataclasses.is_dataclass(block) and not isinstance(block, ModelConfig):
                cls = type(block)
                expected[cls.__name__] = {f.name: getattr(cls(), f.name)
                                          for f in dataclasses.fields(cls) if f.init}
    assert set(tables) == set(expected)
    for name, fields in expected.items():
        documented = {field: default for field, _, default in tables[name]}
        assert documented == {k: repr(v) for k, v in fields.items()}, name
    assert config_lib.MODES == ("train", "sample", "extract", "evaluate", "reference_stats")


IMAGENET = f"--config={ROOT / 'configs' / 'imagenet256.py'}"
IMAGENET_TRAIN_IMAGES = 1_281_167


@pytest.mark.parametrize("flags, steps", [
    ((), 1_501_368),                                    # 300 epochs at batch 256
    (("--config.batch_size=1024",), 375_342),           # the pod command: still 300 epochs
    (("--config.batch_size=1024", "--config.num_epochs=100"), 125_114),
    (("--config.num_steps=5000",), 5000),               # an explicit length still wins
])
def test_imagenet_run_length_follows_batch_and_epoch_overrides(flags, steps):
    """The file leaves the length to the trainer, which divides the epochs' images by
    the batch that is actually used (a count fixed in the file ignored both flags)."""
    from lasad_jax.training.host_loop import run_length

    config = flag_config(IMAGENET, *flags)
    assert run_length(num_steps=config.num_steps, num_epochs=config.num_epochs,
                      batch_size=config.batch_size,
                      num_examples=IMAGENET_TRAIN_IMAGES) == steps


def test_extracted_source_length_counts_images_not_views():
    """The trainer's epoch is its source's length: ten views of 5 images are 5 examples,
    so 300 epochs stay 300 passes over the images however many views were extracted."""
    import numpy as np

    from lasad_jax.data.extracted import ExtractedSource

    codes = [np.zeros((3, 10, 2, 2), np.int16), np.zeros((2, 10, 2, 2), np.int16)]
    labels = [np.zeros(3, np.int32), np.zeros(2, np.int32)]
    assert len(ExtractedSource(codes, labels, num_views=10, grid=(2, 2))) == 5


def test_a_preset_that_would_change_nothing_is_refused():
    """The demo sets all three sizes, so a preset on top of it cannot take effect: one
    line names the fields to clear; clearing them (`=None`) gives the preset's model,
    and a preset over some set fields fills only the others."""
    demo_file = f"--config={ROOT / 'configs' / 'demo.py'}"
    with pytest.raises(ConfigError) as err:
        parse(flag_config(demo_file, "--config.model.preset=XL"), "train")
    hits = [p for p in err.value.problems if p.startswith("config.model.preset='XL'")]
    assert len(hits) == 1 and "\n" not in hits[0], err.value.problems
    for words in ("num_layers=4, num_heads=4, dim=96", "--config.model.num_layers=None "
                  "--config.model.num_heads=None --config.model.dim=None"):
        assert words in hits[0]
    cleared = flag_config(demo_file, "--config.model.preset=XL", "--config.model.num_layers=None",
                          "--config.model.num_heads=None", "--config.model.dim=None")
    model = parse(cleared, "train").model
    assert (model.num_layers, model.num_heads, model.dim) == (36, 20, 1280)
    partial = flag_config(demo_file, "--config.model.preset=XL", "--config.model.dim=None")
    model = parse(partial, "train").model
    assert (model.num_layers, model.num_heads, model.dim) == (4, 4, 1280)
    with pytest.raises(ConfigError, match="batch_size takes an int, got 'None'"):
        flag_config(demo_file, "--config.batch_size=None")  # not a None-able field


def test_a_grid_given_as_a_list_is_stored_as_a_tuple_and_generates():
    import jax.numpy as jnp
    import numpy as np

    from lasad_jax.sampling import generate
    from tests.models.helpers import perturbed_model, small_config

    listed = small_config("lasad", grid=[3, 4])
    assert listed.grid == (3, 4) and isinstance(listed.grid, tuple)
    assert listed == small_config("lasad") and hash(listed) == hash(small_config("lasad"))
    labels = jnp.array([0, 2])
    got = generate(perturbed_model(listed), labels, jax.random.key(3))
    want = generate(perturbed_model(small_config("lasad")), labels, jax.random.key(3))
    assert got.shape[0] == 2 and got.size == 2 * 12
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("text", ["(train,val)", "train,val", "('train', 'val')", "[train, val]"])
def test_extract_splits_written_without_quotes_are_split(text):
    config = flag_config(IMAGENET, f"--config.data.extract_splits={text}")
    assert config.data.extract_splits == ("train", "val")
    # a tuple of numbers is read as before
    assert flag_config(IMAGENET, "--config.sample.classes=(1,2)").sample.classes == (1, 2)


def test_a_malformed_split_name_is_refused_before_extraction():
    from lasad_jax.data.config import DataConfig

    for bad in (("(train,val)",), ("train", "a/b"), ()):
        with pytest.raises(ValueError) as err:
            DataConfig(extract_splits=bad)
        (line,) = str(err.value).splitlines()[-1:]
        assert "data.extract_splits must be a non-empty tuple of split names" in line, line
        assert repr(bad) in line
    assert DataConfig(extract_splits=("train", "val", "test-2")).extract_splits[-1] == "test-2"


def test_a_split_the_source_lacks_is_refused_before_extraction(tmp_path):
    """Found when the config is read, not after the splits before it are extracted."""
    from lasad_jax.data.config import DataConfig, run_problems

    (tmp_path / "train" / "cat").mkdir(parents=True)
    folder = DataConfig(name="extracted", codes_dir=str(tmp_path / "codes"),
                        image_source="imagefolder", image_dir=str(tmp_path),
                        extract_splits=("train", "valid"))
    assert run_problems(folder, "extract") == [
        f"data.extract_splits names ['valid'], which data.image_dir={str(tmp_path)!r} has "
        "no folder for (each split is <image_dir>/<split>/<class>/<image>)"]
    assert run_problems(dataclasses.replace(folder, extract_splits=("train",)), "extract") == []
    tfds = DataConfig(name="extracted", codes_dir=str(tmp_path / "codes"),
                      tfds_data_dir=str(tmp_path), extract_splits=("train", "test"))
    assert run_problems(tfds, "extract") == [
        "data.extract_splits names ['test'], which tfds imagenet2012 does not have; its "
        "splits are 'train', 'val', 'validation'"]


def test_the_fused_decoding_step_on_a_gpu_needs_its_head_sizes(monkeypatch):
    """Triton tiles have power-of-two sides of 16 or more: a model whose heads do not
    fit (the 3B preset's head dim is 100) is refused for a GPU when the config is read,
    not when it first draws. Pallas' CPU interpreter takes any size."""
    import lasad_jax.config as config_module

    config = demo(model__decode_impl="pallas", model__dim=96, model__num_heads=4)  # heads of 24
    parse(config, "sample")  # CPU: interpreted, fine
    monkeypatch.setattr(config_module, "target_platform", lambda: "gpu")
    with pytest.raises(ValueError) as err:
        parse(config, "sample")
    assert ("config.model.decode_impl='pallas' needs Dk a power of two >= 16 on GPU (Triton "
            "tiles), got 24 (model.dim / model.num_heads); use 'auto' or 'xla'") in str(err.value)
    parse(demo(model__decode_impl="pallas", model__dim=64, model__num_heads=4), "sample")
    parse(demo(model__dim=96, model__num_heads=4), "sample")  # the XLA step takes any size


def test_the_single_process_modes_ignore_the_mesh():
    """Reference statistics (as extraction) run on one device of one process: a pod's
    mesh carried over to them is not refused for devices they never use."""
    config = tiny_demo_config()
    config.mesh.update(data=2)  # one device here
    assert parse(config, "reference_stats").mesh.data == 2
    with pytest.raises(ConfigError, match=r"config\.mesh .* has 2 devices, but JAX sees 1"):
        parse(config, "evaluate")
