"""Weight-editing baselines (FT-L, LoRA, ROME, KN) on the Flax Llama, functional and batched: an
edit returns a delta (delta.py), the base params are never changed; `methods.edit` runs one
optimisation per request, vmapped over a batch of requests. protocols.py reads the answers of the
edited models the reference's way and the in-context runs' way."""
