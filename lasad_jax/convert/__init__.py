"""Converters from other projects' checkpoints (PyTorch state dicts) to this package's."""
