"""Sampling: pure generation (`generate`) and the `--mode=sample` job."""

from lasad_jax.sampling.generate import filter_logits, generate, guide, sample_logits

__all__ = ["filter_logits", "generate", "guide", "sample_logits"]
