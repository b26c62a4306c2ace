"""`ModelConfig` built from Python checks its fields' types as a config file's do: a wrong
type is one line naming the field, never a TypeError from inside a check."""

from __future__ import annotations

import pytest

from lasad_jax.models import ModelConfig
from lasad_jax.validation import ConfigError


@pytest.mark.parametrize("fields, line", [
    ({"grid": 8}, "model.grid must be two positive ints (rows, cols), got 8"),
    ({"grid": (8, "8")}, "model.grid must be two positive ints (rows, cols), got (8, '8')"),
    ({"dim": "64"}, "model.dim must be a positive int, got '64'"),
    ({"rope_base": "x"}, "model.rope_base must be > 0, got 'x'"),
    ({"norm_eps": None}, "model.norm_eps must be > 0, got None"),
    ({"chunk_size": 0}, "model.chunk_size must be None or a positive int, got 0"),
    ({"mixer": 3}, "model.mixer must be one of ('lasad', 'lasad_row', 'linear_1d', 'linear', "
                   "'softmax'), got 3"),
])
def test_a_wrong_type_is_one_line_naming_the_field(fields, line):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**fields)
    assert err.value.problems == (line,)


def test_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        ModelConfig(grid=8, dim="64", rope_base=-1.0)
    assert [p.split()[0] for p in err.value.problems] == ["model.dim", "model.grid",
                                                          "model.rope_base"]
