"""lasad_jax: LASADGen, autoregressive image generation with linear attention and
spatial-aware decay, in JAX.

Subpackages import downwards only (tests/repo/test_import_graph.py), lowest first:
validation < ops < parallel < models < tokenizers < data < training < sampling
< evaluation < convert < config < jobs < main (docs/configuration.md).
"""

__version__ = "0.1.0"
