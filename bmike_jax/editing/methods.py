"""The weight-editing methods by name, one call for all: requests -> a batch of deltas."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from bmike_jax.editing import ft, kn, lora, memit, rome
from bmike_jax.editing.request import EditRequest, subject_template
from bmike_jax.model.config import LlamaConfig


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  config_type: type
  module: Any


METHODS = {
    "ft": Method("ft", ft.FTConfig, ft),
    "lora": Method("lora", lora.LoRAConfig, lora),
    "rome": Method("rome", rome.ROMEConfig, rome),
    "kn": Method("kn", kn.KNConfig, kn),
    "memit": Method("memit", memit.MEMITConfig, memit),
}


def method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown editing method {name!r}; valid: {', '.join(METHODS)}")
  return METHODS[name]


def check_request(name: str, request: EditRequest) -> None:
  """Raise EditError when `request` cannot be edited by method `name` (ROME: the subject must
  occur exactly once in the prompt)."""
  if method(name).name in ("rome", "memit"):
    subject_template(request)


def check_layers(config: LlamaConfig, hp) -> None:
  """A layer index of the hyper-parameters must exist in the model (the 3B defaults name layers
  a 2-layer test model or SmolLM2 may lack)."""
  for name in ("layer",):
    value = getattr(hp, name, None)
    if value is not None and not 0 <= value < config.num_layers:
      raise ValueError(
          f"{type(hp).__name__}.{name}={value} is not a layer of this "
          f"{config.num_layers}-layer model"
      )
  for value in getattr(hp, "layers", None) or ():
    if not 0 <= value < config.num_layers:
      raise ValueError(
          f"{type(hp).__name__}.layers holds {value}, not a layer of this "
          f"{config.num_layers}-layer model"
      )


def edit(
    name: str,
    config: LlamaConfig,
    params,
    tokenizer,
    requests: Sequence[EditRequest],
    hp=None,
    second_moments=None,
    **pad,
) -> tuple[dict, Any]:
  """One optimisation per request, batched (vmapped): (delta with a leading [R] axis, info:
  FT-L / LoRA (losses [R, steps], final losses [R]), ROME / KN a dict of [R]-leading arrays).
  `pad` fixes the padded shapes (`length`, ...), so that two calls compile and compute alike.
  MEMIT needs `second_moments` (stats.load_or_compute), the others take none."""
  m = method(name)
  hp = m.config_type() if hp is None else hp
  check_layers(config, hp)
  prepared = m.module.prepare_batch(tokenizer, requests, hp, **pad)
  if m.name == "memit":
    out = m.module.edit(config, params, hp, prepared, second_moments)
  elif second_moments is not None:
    raise ValueError(f"second moments are for MEMIT, not {name}")
  else:
    out = m.module.edit(config, params, hp, prepared)
  return out[0], out[1:] if len(out) > 2 else out[1]


def batched_program(name: str, config: LlamaConfig, hp):
  """Method `name`'s jitted batch of edits, (params, prepared[, second moments]) -> (delta, info):
  what `edit` runs (editing/batch_size compiles it to read its memory)."""
  return method(name).module.batched_program(config, hp)
