"""Generation engine: bucketed, prefix-reusing, sharded greedy decoding and continuation scoring."""

from bmike_jax.engine.answer import answer_text, cut_at_quote
from bmike_jax.engine.buckets import PromptTooLongError, default_length_buckets
from bmike_jax.engine.engine import Engine, GenerationResult, ThroughputStats
from bmike_jax.engine.sharding import make_mesh

__all__ = [
    "Engine",
    "GenerationResult",
    "ThroughputStats",
    "PromptTooLongError",
    "answer_text",
    "cut_at_quote",
    "default_length_buckets",
    "make_mesh",
]
