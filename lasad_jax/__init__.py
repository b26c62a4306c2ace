"""lasad_jax: LASADGen, autoregressive image generation with linear attention and
spatial-aware decay, in JAX."""

__version__ = "0.1.0"
