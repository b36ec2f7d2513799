"""Helpers of `python -m bmike_jax.bench`: workload, subprocess workers, batched HF baseline, FLOP
and bandwidth floors, the synthetic 8B GPU section and the markdown tables."""
