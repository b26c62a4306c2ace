"""LASADGen (Flax NNX) and its configuration."""

from lasad_jax.models.config import MIXERS, PRESETS, ModelConfig
from lasad_jax.models.lasadgen import LASADGen, param_count

__all__ = ["MIXERS", "PRESETS", "LASADGen", "ModelConfig", "param_count"]
