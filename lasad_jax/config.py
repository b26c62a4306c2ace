"""The run configuration: a config file in, one typed and checked object out.

Config files stay `ml_collections` files (`--config=configs/demo.py
--config.model.mixer=softmax`): each starts from `default_config(task)`, which holds
every field of a run at its default, so any field can be set from the command line
(fields whose default is None are placeholders of their type). `parse` reads such a
config once, at the entry, into frozen dataclasses, one per block, each checked by the
package that owns it:

    mesh       lasad_jax.parallel.mesh.MeshConfig
    data       lasad_jax.data.config.DataConfig (tokenizer task: ImageDataConfig)
    tokenizer  lasad_jax.tokenizers.config.TokenizerConfig
    model      lasad_jax.models.config.ModelConfig (sized by the tokenizer and the data)
    optimizer  lasad_jax.training.config.OptimizerConfig
    train      lasad_jax.training.config.TrainConfig (tokenizer task: TokenizerTrainConfig)
    sample     lasad_jax.sampling.config.SampleConfig
    eval       lasad_jax.evaluation.config.EvalConfig
    vq, loss   lasad_jax.tokenizers.vq.VQConfig, lasad_jax.training.vq.losses.VQLossConfig

It then checks what joins the blocks and what the mode needs (files, devices, the
batch split), and raises every problem of every block in one `ConfigError`, before any
data or model is touched. Nothing below this module reads a ConfigDict.

The command line's side is here too: `load_config_file` reads `--config=PATH` and
`apply_overrides` sets the `--config.FIELD=VALUE` flags, checking each field's name
(naming the nearest valid one) and type, so a typo is one line, not a traceback.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import inspect
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from absl import flags
from ml_collections import config_dict
from ml_collections.config_flags.tuple_parser import TupleParser

from lasad_jax.data.config import (
    DataConfig,
    ImageDataConfig,
    run_problems as data_problems,
    tokenizer_fit_problems,
)
from lasad_jax.evaluation.config import EvalConfig, run_problems as eval_problems
from lasad_jax.models import ModelConfig
from lasad_jax.models.config import PRESET_FIELDS
from lasad_jax.ops.platform import target_platform
from lasad_jax.ops.validation import fused_decode_head_problem
from lasad_jax.parallel.mesh import (
    ALL_DATA,
    AXES,
    MeshConfig,
    batch_problems,
    data_parallel_size,
    mesh_shape,
)
from lasad_jax.parallel.rules import split_problems
from lasad_jax.sampling.config import SampleConfig, class_problems
from lasad_jax.tokenizers.config import TokenizerConfig, checkpoint_problems
from lasad_jax.tokenizers.geometry import CodeGeometry, code_geometry
from lasad_jax.tokenizers.vq import VQConfig
from lasad_jax.training.config import (
    OptimizerConfig,
    TokenizerTrainConfig,
    TrainConfig,
    accumulation_problems,
    schedule_problems,
)
from lasad_jax.training.vq.losses import VQLossConfig
from lasad_jax.training.vq.perceptual import perceptual_problems
from lasad_jax.validation import (
    ConfigError,
    block_from_mapping,
    is_int,
    is_number,
    is_seed,
    problems_of,
)

MODES = ("train", "sample", "extract", "evaluate", "reference_stats")
TASKS = ("generator", "tokenizer")
HEADER = "the config cannot run"
# Model fields that come from the tokenizer and the dataset, never from the config.
DERIVED_MODEL_FIELDS = ("vocab_size", "grid", "num_classes")


@dataclasses.dataclass(frozen=True)
class GeneratorRun:
    """Everything one generator run reads. The defaults are LlamaGen's class-conditional
    recipe on VQ-16 codes of ImageNet 256 (configs/imagenet256.py adds the model size)."""

    task: str = "generator"
    seed: int = 0
    batch_size: int = 256
    num_steps: int = 0      # the run's length; 0: `num_epochs` passes over the data
    num_epochs: int = 300
    mesh: MeshConfig = ALL_DATA
    data: DataConfig = DataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def geometry(self) -> CodeGeometry:
        """The code grid and vocabulary: the tokenizer's, as the model was sized by it."""
        return CodeGeometry(self.model.vocab_size, self.model.grid)


@dataclasses.dataclass(frozen=True)
class TokenizerRun:
    """Everything one tokenizer training run reads; the defaults are LlamaGen's VQ-16
    recipe on ImageNet (lr 1e-4 at batch 128, 40 epochs)."""

    task: str = "tokenizer"
    seed: int = 0
    batch_size: int = 128
    num_steps: int = 0
    num_epochs: int = 40
    mesh: MeshConfig = ALL_DATA
    data: ImageDataConfig = ImageDataConfig()
    # commit_beta 1: the loss block applies the 0.25 commitment weight, once.
    vq: VQConfig = VQConfig(commit_beta=1.0)
    loss: VQLossConfig = VQLossConfig()
    optimizer: OptimizerConfig = OptimizerConfig(lr=2e-4)
    train: TokenizerTrainConfig = TokenizerTrainConfig()


RunConfig = GeneratorRun | TokenizerRun
RUNS: dict[str, type] = {"generator": GeneratorRun, "tokenizer": TokenizerRun}


# -- the config file's side: a ConfigDict with every field


def default_config(task: str = "generator") -> config_dict.ConfigDict:
    """Every field of a `task` run at its default, as the ConfigDict a config file
    starts from and overrides. Fields whose default is None are placeholders of their
    type, so `--config.model.chunk_size=64` can set them."""
    if task not in RUNS:
        raise ConfigError([f"config.task must be one of {TASKS}, got {task!r}"])
    run = RUNS[task]()
    config = config_dict.ConfigDict()
    for field in dataclasses.fields(run):
        value = getattr(run, field.name)
        if isinstance(value, ModelConfig):
            config[field.name] = _model_block(value)
        elif dataclasses.is_dataclass(value):
            config[field.name] = _block(value)
        else:
            config[field.name] = value
    return config


def _block(block: Any, *, skip: tuple[str, ...] = (),
           none: tuple[str, ...] = ()) -> config_dict.ConfigDict:
    """The fields of `block` (but `skip`) as a ConfigDict; a None default, and every
    field in `none`, becomes a placeholder of the field's type."""
    hints = typing.get_type_hints(type(block))
    out = config_dict.ConfigDict()
    for field in dataclasses.fields(block):
        if field.init and field.name not in skip:
            value = getattr(block, field.name)
            out[field.name] = (config_dict.placeholder(_scalar_type(hints[field.name]))
                               if value is None or field.name in none else value)
    return out


def _scalar_type(hint: Any) -> type:
    """`int | None` -> int: the type a None field's placeholder accepts."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _model_block(model: ModelConfig) -> config_dict.ConfigDict:
    """The model block as a config sets it: a `preset` ("", or one of `PRESETS`) fills
    `num_layers`, `num_heads` and `dim` where those are None; vocabulary, grid and
    classes are not settable, they come from the tokenizer and the dataset."""
    block = _block(model, skip=DERIVED_MODEL_FIELDS, none=PRESET_FIELDS)
    block.preset = ""
    return block


# -- the command line's side: --config=PATH and --config.FIELD=VALUE


def load_config_file(spec: str) -> config_dict.ConfigDict:
    """The config of `--config=PATH` (or `PATH:ARG`, given to `get_config(ARG)`), or a
    `ConfigError` of one line naming the file and what is wrong with it."""
    path, _, arg = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not path:
        raise ConfigError(["--config is empty: give a config file, e.g. "
                           "--config=configs/demo.py"])
    if not os.path.isfile(path):
        here = os.path.dirname(path) or "."
        others = sorted(f for f in os.listdir(here) if f.endswith(".py")) if os.path.isdir(
            here) else []
        near = difflib.get_close_matches(os.path.basename(path), others, n=1, cutoff=0.75)
        hint = (f"did you mean {os.path.join(os.path.dirname(path), near[0])}?" if near else
                f"the files there: {', '.join(others)}" if others else
                "the configs are in configs/ (e.g. configs/demo.py)")
        raise ConfigError([f"--config={path}: no such file; {hint}"])
    try:
        module_spec = importlib.util.spec_from_file_location("lasad_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if get_config is None:
            raise ConfigError([f"--config={path} has no get_config() function"])
        takes_arg = bool(inspect.signature(get_config).parameters)
        config = get_config(arg) if takes_arg else get_config()
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the file is the file's
        first = (str(err).splitlines() or [""])[0]
        raise ConfigError([f"--config={path} fails to load: {type(err).__name__}: {first}"]) \
            from err
    if not isinstance(config, config_dict.ConfigDict):
        raise ConfigError([f"--config={path}: get_config() must return an ml_collections "
                           f"ConfigDict, got {type(config).__name__}"])
    return config


_PARSERS = {bool: flags.BooleanParser(), int: flags.IntegerParser(),
            float: flags.FloatParser(), tuple: TupleParser()}
_TYPE_NAMES = {bool: "True or False", int: "an int", float: "a number", tuple: "a tuple",
               str: "a string"}


def _field(config: config_dict.ConfigDict, path: str) -> tuple[Any, str, str | None]:
    """`(block, field name, problem)` for the dotted `path` under `config`."""
    node, parts = config, path.split(".")
    for depth, part in enumerate(parts):
        where = ".".join(["config", *parts[:depth]])
        if not isinstance(node, config_dict.ConfigDict):
            return None, part, f"--config.{path}: {where} is a value, not a block of fields"
        if part not in node:
            keys = sorted(node.keys())
            near = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
            hint = (f"did you mean --config.{'.'.join([*parts[:depth], near[0]])}?" if near
                    else f"its fields: {', '.join(keys)}")
            return None, part, f"--config.{path}: {where} has no field {part!r}; {hint}"
        if depth < len(parts) - 1:
            node = node[part]
    if isinstance(node[parts[-1]], config_dict.ConfigDict):
        return None, parts[-1], (f"--config.{path} is a block: set its fields, "
                                 f"--config.{path}.FIELD=VALUE")
    return node, parts[-1], None


def _nullable(block: config_dict.ConfigDict, name: str) -> bool:
    """Whether the field was declared as None-able: `default_config` makes every field
    whose default is None a typed placeholder (a FieldReference), and setting a value
    keeps it one, so `--config.model.dim=None` can hand the field back to the preset."""
    refs = dict(block.items(preserve_field_references=True))
    return isinstance(refs.get(name), config_dict.FieldReference)


def _split_words(value: tuple, text: str, current: Any) -> tuple:
    """ml_collections reads an unquoted `(train,val)` as the one string '(train,val)';
    for a field that holds a tuple of strings, split it into ('train', 'val') as meant.
    Quoted tuples, and fields of numbers, are left as parsed."""
    words = (isinstance(current, tuple) and current
             and all(isinstance(x, str) for x in current))
    if not (words and len(value) == 1 and value[0] == text):
        return value
    inner = text.strip()
    if inner[:1] + inner[-1:] in ("()", "[]"):
        inner = inner[1:-1]
    parts = (part.strip().strip("'\"").strip() for part in inner.split(","))
    return tuple(part for part in parts if part)


def apply_overrides(config: config_dict.ConfigDict,
                    overrides: Sequence[tuple[str, str | None]]) -> None:
    """Sets each `(path, text)` of a `--config.PATH=TEXT` flag (text None: a bare
    `--config.PATH`, True for a bool; `--noconfig.PATH` comes as "false"), parsed as the
    field's type. `None` clears a field whose default is None (`model.dim`, ...); a
    tuple of strings may be written unquoted (`(train,val)` or `train,val`). Every
    unknown field (with the nearest valid name) and every value of the wrong type is
    reported at once, in one `ConfigError`, before any is set."""
    problems, updates = [], []
    tuples: dict[str, tuple] = {}
    for path, text in overrides:
        block, name, problem = _field(config, path)
        if problem:
            problems.append(problem)
            continue
        kind = block.get_type(name)
        if kind is bool and text is None:
            text = "true"
        if text is None:
            problems.append(f"--config.{path} needs a value: --config.{path}=VALUE")
            continue
        if text == "None" and _nullable(block, name):
            updates.append((block, name, None, path, text))
            continue
        try:
            value = _PARSERS[kind].parse(text) if kind in _PARSERS else text
            if kind is tuple:  # repeated tuple flags add up, as in ml_collections
                value = _split_words(tuple(value), text, block[name])
                value = tuples[path] = tuples.get(path, ()) + value
        except (ValueError, TypeError, SyntaxError):
            problems.append(f"--config.{path}={text}: {path} takes "
                            f"{_TYPE_NAMES.get(kind, kind.__name__)}, got {text!r}")
            continue
        updates.append((block, name, value, path, text))
    for block, name, value, path, text in updates:
        try:
            block[name] = value
        except TypeError as err:
            problems.append(f"--config.{path}={text}: {str(err).splitlines()[0]}")
    if problems:
        raise ConfigError(problems, "bad --config flags" if len(problems) > 1 else None)


# -- the program's side: the typed run, checked


class _Problems:
    """Problems of the whole config: an owner's lines name `block.field` and get the
    `config.` prefix here; the entry's own lines are written whole."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def owner(self, lines: list[str]) -> None:
        self.lines.extend(f"config.{line}" for line in lines)

    def build(self, build: Callable[[], Any]) -> Any:
        """`build()`, or None with its problems recorded."""
        try:
            return build()
        except ValueError as err:
            self.owner(problems_of(err))
            return None

    def best_effort(self, check: Callable[..., list[str]], *args: Any) -> None:
        """A check that also runs on blocks whose own fields failed (`_unchecked`), so
        that its problems (a missing file, sizes that do not fit) show in the same round;
        a value too broken to check is skipped, its block's problems already say why."""
        try:
            self.owner(check(*args))
        except (TypeError, ValueError, AttributeError, OSError):
            pass


def _unchecked(default: Any, given: Any) -> Any:
    """The block `default` with the given fields set but not checked: what the file
    checks read when the block itself has problems (None when it is not even a dict)."""
    if not isinstance(given, Mapping):
        return None
    block = copy.copy(default)
    names = {f.name for f in dataclasses.fields(block)}
    for name, value in given.items():
        if name in names:
            object.__setattr__(block, name, value)
    return block


def parse(config: config_dict.ConfigDict | Mapping[str, Any], mode: str) -> RunConfig:
    """The typed run of a config file for `mode`, or ConfigError listing every problem.

    Besides each block's own checks: the model is sized by the tokenizer's code geometry
    and the dataset's classes (computed here, once); the tokenizer must read the
    embedded dataset's images; the mode's files must exist (codes, tokenizer weights,
    Inception weights, reference); the mesh must fit the devices JAX sees and every
    batch must split over its data-parallel devices.
    """
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if mode not in MODES:
        raise ConfigError([f"--mode must be one of {MODES}, got {mode!r}"], HEADER)
    task = values.get("task", "generator")
    if task not in TASKS:
        raise ConfigError([f"config.task must be one of {TASKS}, got {task!r}"], HEADER)
    if task == "tokenizer" and mode != "train":
        raise ConfigError([f"--mode={mode} does not apply to a tokenizer config (config.task="
                           "'tokenizer'); train it, then use workdir/tokenizer as the "
                           "generator config's tokenizer.checkpoint"], HEADER)
    problems = _Problems()
    cls = RUNS[task]
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        problems.lines.append(f"config has unknown fields {unknown}; valid fields: {names}")
    default = cls()
    blocks: dict[str, Any] = {}  # the blocks that passed their own checks
    seen: dict[str, Any] = {}    # every block, unchecked where it did not (for file checks)
    for field in dataclasses.fields(cls):
        base = getattr(default, field.name)
        if dataclasses.is_dataclass(base) and field.name != "model":
            given = values.get(field.name)
            blocks[field.name] = base if given is None else problems.build(
                lambda t=type(base), n=field.name, g=given: block_from_mapping(t, n, g))
            seen[field.name] = blocks[field.name] or _unchecked(base, given)
    top = {name: values.get(name, getattr(default, name))
           for name in ("seed", "batch_size", "num_steps", "num_epochs")}
    problems.owner(_top_problems(top, mode))
    if task == "generator":
        blocks["model"] = _generator_checks(problems, values.get("model") or {}, blocks, seen,
                                            top, mode)
    else:
        _tokenizer_checks(problems, blocks, seen, top, mode)
    if problems.lines:
        raise ConfigError(problems.lines, HEADER)
    return cls(task=task, **top, **blocks)


def _top_problems(top: dict[str, Any], mode: str) -> list[str]:
    problems = []
    if not is_seed(top["seed"]):
        problems.append(f"seed must be an int in [0, 2**32), got {top['seed']!r}")
    if not (is_int(top["batch_size"]) and top["batch_size"] >= 1):
        problems.append(f"batch_size must be >= 1, got {top['batch_size']!r}")
    if not (is_int(top["num_steps"]) and top["num_steps"] >= 0):
        problems.append(f"num_steps must be an int >= 0, got {top['num_steps']!r}")
    if not (is_number(top["num_epochs"]) and top["num_epochs"] >= 0):
        problems.append(f"num_epochs must be >= 0, got {top['num_epochs']!r}")
    elif mode == "train" and not top["num_steps"] and not top["num_epochs"]:
        problems.append("num_steps or num_epochs must be set (both are 0)")
    return problems


def _generator_checks(problems: _Problems, model_fields: Mapping[str, Any],
                      blocks: dict[str, Any], seen: dict[str, Any], top: dict[str, Any],
                      mode: str) -> ModelConfig | None:
    data, tok, train = blocks["data"], blocks["tokenizer"], blocks["train"]
    sample, opt, mesh = blocks["sample"], blocks["optimizer"], blocks["mesh"]
    geometry = problems.build(lambda: code_geometry(tok)) if tok else None
    # The model's own fields are checked even when the geometry or the classes are not
    # known, with stand-ins, so that their problems are reported in the same round.
    model = problems.build(lambda: ModelConfig.from_config(
        model_fields, vocab_size=geometry.vocab_size if geometry else 2,
        grid=geometry.grid_shape if geometry else (1, 1),
        num_classes=data.num_classes if data else 1))
    samples = mode in ("sample", "evaluate") or (mode == "train" and train and
                                                 train.sample_at_end)
    problems.best_effort(data_problems, seen["data"], mode)
    if data and tok:
        problems.owner(tokenizer_fit_problems(data, tok.name, tok.image_size, tok.channels))
    if mode == "extract" or samples:
        why = "encoding images" if mode == "extract" else "decoding samples"
        problems.best_effort(checkpoint_problems, seen["tokenizer"], why)
    if samples and sample and data and geometry:
        problems.owner(class_problems(sample, data.num_classes, geometry.vocab_size))
    if model and mode not in ("extract", "reference_stats"):  # the modes that decode
        problems.owner(fused_decode_problems(model))
    if mode in ("evaluate", "reference_stats"):
        problems.best_effort(eval_problems, seen["eval"], mode)
    if opt and mode == "train" and is_int(top["num_steps"]):
        problems.owner(schedule_problems(opt, top["num_steps"]))
    batches = {}
    if mode == "train":
        batches["batch_size"] = top["batch_size"]
        if train:
            batches["train.eval_batch_size"] = train.eval_batch_size
            shards = data_parallel_size(mesh, jax.device_count()) if mesh else None
            problems.owner(accumulation_problems(top["batch_size"], train.grad_accum_steps,
                                                 shards))
    if samples and sample:
        batches["sample.batch_size"] = sample.batch_size
    # Extraction and reference statistics run in one process on its first device; the
    # other modes place the model on the mesh.
    if mesh and mode not in ("extract", "reference_stats"):
        problems.owner(batch_problems(mesh, jax.device_count(), batches))
        if model:
            problems.owner(split_problems(mesh, jax.device_count(), dim=model.dim,
                                          num_heads=model.num_heads,
                                          mlp_hidden=model.mlp_hidden))
    return model if geometry and data else None


def fused_decode_problems(model: ModelConfig) -> list[str]:
    """The fused decoding step compiles for a GPU at some head sizes only: a model that
    asks for it there is refused now, not when it first draws (after training, with
    `train.sample_at_end`). Pallas' CPU interpreter takes any size."""
    if model.decode_impl != "pallas" or target_platform() != "gpu":
        return []
    problem = fused_decode_head_problem(model.head_dim, model.head_dim)
    return [f"model.decode_impl='pallas' {problem} (model.dim / model.num_heads); use "
            "'auto' or 'xla'"] if problem else []


def _tokenizer_checks(problems: _Problems, blocks: dict[str, Any], seen: dict[str, Any],
                      top: dict[str, Any], mode: str) -> None:
    train, opt, mesh = blocks["train"], blocks["optimizer"], blocks["mesh"]
    problems.best_effort(lambda loss: perceptual_problems(
        loss.perceptual_weight, loss.perceptual_weights), seen["loss"])
    problems.best_effort(data_problems, seen["data"], mode)
    problems.best_effort(_image_size_problems, seen["train"], seen["vq"], seen["data"])
    problems.best_effort(_discriminator_problems, seen["train"], seen["loss"])
    problems.best_effort(_rgb_problems, seen["vq"])
    if opt and is_int(top["num_steps"]):
        problems.owner(schedule_problems(opt, top["num_steps"]))
    if mesh and train:
        problems.owner(batch_problems(mesh, jax.device_count(), {
            "batch_size": top["batch_size"], "train.eval_batch_size": train.eval_batch_size}))
        problems.owner(_tokenizer_mesh_problems(mesh, jax.device_count()))


def _discriminator_problems(train: TokenizerTrainConfig, loss: VQLossConfig) -> list[str]:
    """The PatchGAN halves the image `loss.disc_layers` times and its two stride-1 4x4
    convs take 2 more pixels: at least 3 must be left, or its logits are empty and every
    loss is NaN from the first step (its weight is 0 before `disc_start`, 0 x NaN is
    still NaN)."""
    size, layers = train.image_size, loss.disc_layers
    if size >> layers >= 3:
        return []
    most = max(size // 3, 1).bit_length() - 1
    fewer = f"disc_layers <= {most} or " if most >= 1 else ""
    return [f"loss.disc_layers={layers} leaves the PatchGAN no output at "
            f"train.image_size={size} (its map is image_size / 2**disc_layers - 2 = "
            f"{(size >> layers) - 2} pixels wide); use {fewer}an image_size of at least "
            f"{3 << layers}"]


def _rgb_problems(vq: VQConfig) -> list[str]:
    """Tokenizer training reads RGB images, and its LPIPS and PatchGAN take 3 channels."""
    return [f"vq.{field} must be 3 to train a tokenizer (the image pipeline, LPIPS and "
            f"the PatchGAN are RGB), got {getattr(vq, field)}"
            for field in ("in_channels", "out_channels") if getattr(vq, field) != 3]


def _tokenizer_mesh_problems(mesh: MeshConfig, num_devices: int) -> list[str]:
    """The tokenizer's weights are replicated (72M parameters for VQ-16): `data` and
    `fsdp` both split its batch, but a `tensor` axis would have its devices compute the
    same batch shard again."""
    try:
        tensor = dict(zip(AXES, mesh_shape(mesh, num_devices)))["tensor"]
    except ConfigError:
        return []  # batch_problems names the mesh's own problem
    if tensor == 1:
        return []
    return [f"mesh.tensor={mesh.tensor} gives a tensor axis of {tensor} devices, but the "
            "tokenizer is data-parallel only (its weights are replicated); set "
            "mesh.tensor=1 and give the devices to mesh.data or mesh.fsdp"]


def _image_size_problems(train: TokenizerTrainConfig, vq: VQConfig,
                         data: ImageDataConfig) -> list[str]:
    """The tokenizer trains at `train.image_size`: a multiple of its downsampling factor,
    and of 8 for the digits (upscaled from 8x8)."""
    image_size, problems = train.image_size, []
    if image_size % vq.downsample_factor:
        problems.append(f"train.image_size={image_size} must be a multiple of the tokenizer's "
                        f"downsampling factor {vq.downsample_factor} (2 ** (len(vq.ch_mult) - 1))")
    if data.name == "digits" and image_size % 8:
        problems.append(f"train.image_size={image_size} must be a multiple of 8 to upscale "
                        "the 8x8 digits (data.name='digits')")
    return problems
