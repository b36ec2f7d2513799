"""The one error type of checkpoint loading: names the file, the tensor and what was expected."""

from __future__ import annotations


class CheckpointError(ValueError):
  """A checkpoint (or tokenizer) that cannot be loaded as the Llama it claims to be."""
