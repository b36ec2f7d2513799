"""bmike-jax: BMIKE-53 cross-lingual in-context knowledge editing on Llama, in JAX."""

__version__ = "0.1.0"
