"""Sampling: pure generation (`generate`), and drawing a config's images to files."""

from lasad_jax.sampling.generate import filter_logits, generate, guide, sample_logits

__all__ = ["filter_logits", "generate", "guide", "sample_logits"]
