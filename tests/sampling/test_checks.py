"""The Python API refuses what the command line refuses, with the same messages: class
labels outside the dataset's classes (the null class included), bad sampling arguments
(every one of them at once), top-k above the vocabulary."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasad_jax.config import parse
from lasad_jax.sampling import generate
from lasad_jax.validation import ConfigError
from tests.helpers import load_config
from tests.models.helpers import perturbed_model, small_config


@pytest.fixture(scope="module")
def model():
    # The demo's geometry: 10 classes, 17 tokens.
    return perturbed_model(small_config("lasad", num_classes=10, vocab_size=17, grid=(2, 2)))


def api_problems(model, labels, **kwargs) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as err:
        generate(model, jnp.asarray(labels), jax.random.key(0), **kwargs)
    return err.value.problems


def cli_problems(**sample) -> tuple[str, ...]:
    """The problems `parse` reports for the demo config's `sample` block in sample mode."""
    config = load_config("demo")
    config.sample.update(sample)
    with pytest.raises(ConfigError) as err:
        parse(config, "sample")
    return err.value.problems


def without(prefix: str, lines) -> list[str]:
    return [line.removeprefix(prefix) for line in lines]


@pytest.mark.parametrize("labels, classes", [([3, 12], (3, 12)), ([0, 10], (10,)),
                                             ([-1, 2], None)])
def test_labels_outside_the_classes_are_refused_as_the_cli_refuses_them(model, labels, classes):
    got = api_problems(model, labels)
    assert len(got) == 1 and got[0].startswith("labels must be class ids in [0, 10)")
    if classes is not None:  # the config only takes ids >= 0: its own check says so
        want = cli_problems(classes=classes)
        assert without("labels", got) == without("config.sample.classes", want)
    if 10 in labels:
        assert "(10 is the null class of guidance, used only by cfg_scale)" in got[0]


def test_every_bad_sampling_argument_at_once_with_the_cli_messages(model):
    bad = dict(temperature=0.0, top_p=1.5, cfg_scale=-1.0, top_k=-2)
    got = api_problems(model, [0, 1], **bad)
    want = without("config.sample.", cli_problems(**bad))
    assert list(got) == want and len(got) == 4


def test_top_k_above_the_vocabulary(model):
    got = api_problems(model, [0], top_k=50)
    assert without("", got) == without("config.sample.", cli_problems(top_k=50))


def test_labels_must_be_a_vector_of_integers(model):
    assert api_problems(model, [[0, 1]]) == (
        "labels must be a 1-D array of class ids, got shape (1, 2)",)
    assert api_problems(model, np.array([0.5, 1.0])) == (
        "labels must be integer class ids in [0, 10), got dtype float32",)


def test_values_that_would_draw_garbage_are_refused(model):
    # cfg_scale=inf makes NaN logits (every token 0); a temperature below ~1e-37 makes
    # them overflow, and 1e-40 drew another token than the most likely one.
    got = api_problems(model, [0], cfg_scale=float("inf"), temperature=1e-40)
    assert got == (
        "temperature must be >= 1e-6 (smaller ones overflow the logits; for greedy decoding "
        "use top_k=1), got 1e-40",
        "cfg_scale must be finite and >= 0 (1.0: no guidance), got inf")
    assert api_problems(model, [0], temperature=float("inf")) == (
        "temperature must be finite, got inf",)
    assert without("", got) == without("config.sample.", cli_problems(
        cfg_scale=float("inf"), temperature=1e-40))
    # The floor itself is allowed.
    assert generate(model, jnp.asarray([0]), jax.random.key(0), temperature=1e-6).shape == (
        1, 2, 2)


def test_numpy_scalars_are_numbers(model):
    labels, key = jnp.asarray([0, 1, 2]), jax.random.key(3)
    plain = generate(model, labels, key, cfg_scale=2.0, temperature=0.5, top_k=5, top_p=0.9)
    from_numpy = generate(model, labels, key, cfg_scale=np.float32(2.0),
                          temperature=np.float64(0.5), top_k=np.int64(5), top_p=np.float64(0.9))
    np.testing.assert_array_equal(from_numpy, plain)
    # bools are not numbers here, numpy's neither.
    got = api_problems(model, [0], top_k=np.bool_(True), cfg_scale=True)
    assert got == ("top_k must be an int >= 0 (0: off), got np.True_",
                   "cfg_scale must be finite and >= 0 (1.0: no guidance), got True")
