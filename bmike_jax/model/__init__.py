"""The Flax Llama family model."""

from bmike_jax.model.config import ConfigError, LlamaConfig, RopeScaling
from bmike_jax.model.llama import KVCache, Llama, causal_forward, init_params

__all__ = [
    "ConfigError",
    "LlamaConfig",
    "RopeScaling",
    "KVCache",
    "Llama",
    "causal_forward",
    "init_params",
]
