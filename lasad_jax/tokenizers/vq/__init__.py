"""LlamaGen's VQ-16 image tokenizer in Flax NNX (the model; the uint8 tokenizer wrapper is
`lasad_jax.tokenizers.vq16.VQ16Tokenizer`, the checkpoint converter
`lasad_jax.convert.llamagen_vq`)."""

from lasad_jax.tokenizers.vq.config import VQConfig
from lasad_jax.tokenizers.vq.model import VQModel, abstract_model, param_count
from lasad_jax.tokenizers.vq.quantizer import VectorQuantizer, l2_normalize

__all__ = ["VQConfig", "VQModel", "VectorQuantizer", "abstract_model", "l2_normalize",
           "param_count"]
