"""--edit_batch_size=auto (editing/batch_size.py) on a tiny random Llama (CPU, float32): XLA's
account of each method's batched program grows by a part per edit that the line through 1 and 2
edits predicts; the size chosen for a budget is the largest whose compiled program fits it; the
runner's Editor takes its budget from the device's memory less what the engine and the Editor
hold, and keeps 8 where the backend reports no memory."""

from __future__ import annotations

import jax
import pytest

from bmike_jax import data as data_lib
from bmike_jax.editing import batch_size
from bmike_jax.editing.ft import FTConfig
from bmike_jax.editing.kn import KNConfig
from bmike_jax.editing.lora import LoRAConfig
from bmike_jax.editing.memit import MEMITConfig
from bmike_jax.editing.request import EditRequest
from bmike_jax.editing.rome import ROMEConfig
from bmike_jax.engine import memory
from tests.editing_tiny import CharTokenizer
from tests.engine_tiny import tiny_config, tiny_params

REQUESTS = (
    EditRequest(prompt="Who rules Spain?", target="Ana", subject="Spain", ground_truth="Rome"),
    EditRequest(
        prompt="Where was Mozart born, in which city of which country?",
        target="Oslo in Norway",
        subject="Mozart",
        ground_truth="Wien",
    ),
)
HPARAMS = {
    "ft": FTConfig(layer=1, steps=3),
    "lora": LoRAConfig(steps=3),
    "rome": ROMEConfig(layer=0, steps=3, context_templates=("So. {}",)),
    "kn": KNConfig(),
    "memit": MEMITConfig(layers=(0, 1), context_templates=("So. {}",)),
}


@pytest.fixture(scope="module")
def model():
  config = tiny_config()
  params = tiny_params(config)
  return config, params, CharTokenizer()


def _measure(model, name):
  config, params, tok = model
  hp = HPARAMS[name]
  row = batch_size.widest_row(name, tok, REQUESTS, hp)
  moments = None
  if name == "memit":
    moments = (len(hp.layers), config.intermediate_size, config.intermediate_size)
  held = memory.device_bytes(params)
  return lambda edits: batch_size.program_bytes(
      name, config, params, hp, row, edits, params_bytes=held, second_moments_shape=moments
  )


@pytest.mark.parametrize("name", sorted(HPARAMS))
def test_the_line_through_one_and_two_edits_predicts_four(model, name):
  measure = _measure(model, name)
  one, two, four = measure(1), measure(2), measure(4)
  line = batch_size.EditMemory(fixed_bytes=2 * one - two, per_edit_bytes=two - one)
  assert line.per_edit_bytes > 0
  assert abs(line.bytes_for(4) - four) <= 0.1 * four, (line, four)


def test_the_widest_row_holds_the_longest_request(model):
  config, params, tok = model
  short = batch_size.widest_row("ft", tok, REQUESTS[:1], HPARAMS["ft"])
  wide = batch_size.widest_row("ft", tok, REQUESTS, HPARAMS["ft"])
  assert wide["tokens"].shape[0] > short["tokens"].shape[0]
  measure = _measure(model, "ft")
  assert measure(2) > measure(1)


@pytest.mark.parametrize("name", ["ft", "rome"])
def test_the_chosen_size_is_the_largest_that_fits(model, name):
  measure = _measure(model, name)
  sizes = batch_size.EDIT_BATCH_SIZES
  for budget in (measure(4), measure(4) - 1, measure(16) + 1):
    size, account = batch_size.choose(measure, budget)
    assert measure(size) <= budget and account["fits"] and account["bytes"] == measure(size)
    bigger = [s for s in sizes if s > size]
    assert not bigger or measure(bigger[0]) > budget, (size, budget)
  # a budget below one edit: one edit, said not to fit
  size, account = batch_size.choose(measure, measure(1) - 1)
  assert size == 1 and not account["fits"]


def test_unknown_memory_keeps_the_cpu_size(model):
  config, params, tok = model
  size, account = batch_size.auto_size(
      "ft", config, params, tok, REQUESTS, HPARAMS["ft"], budget=None, params_bytes=0
  )
  assert size == batch_size.CPU_EDIT_BATCH_SIZE == 8 and account == {"budget_bytes": None}


def test_the_editor_budgets_from_device_memory(model, monkeypatch):
  """Editor.batch_size with a device that reports its memory: the budget is the row share of it
  less the engine's weights, its kept prompt KV bound and the Editor's float32 copy, and the size
  fits by XLA's account."""
  from bmike_jax.engine import Engine
  from bmike_jax.runner import weight_edits
  from tests.test_runner_methods import _flag_values

  config, params, tok = model
  engine = Engine(config, params, tok, batch_size=4)
  cfg = _flag_values("--methods=ft", "--ft_hparams=layer=1,steps=3")
  assert cfg.edit_batch_size is None  # auto is the default
  files = [data_lib.load_file(data_lib.SAMPLE_DATA_DIR, "zsre", "de", limit=3)]
  editor = weight_edits.Editor(cfg, engine, tok, "tiny")
  hp = editor.hparams("ft")
  assert editor.batch_size("ft", "zsre", hp, files, None) == (8, {"budget_bytes": None})

  device_memory = 64 << 20
  monkeypatch.setattr(memory, "device_memory_bytes", lambda device: device_memory)
  engine = Engine(config, params, tok, batch_size=4)  # its kept prompt KV bound: 20% of memory
  assert engine.kept_kv_bytes == int(memory.KEPT_KV_SHARE * device_memory)
  editor = weight_edits.Editor(cfg, engine, tok, "tiny")
  size, account = editor.batch_size("ft", "zsre", hp, files, None)
  want = (
      int(memory.ROW_MEMORY_SHARE * device_memory - engine.weight_bytes - engine.kept_kv_bytes)
      - editor.held_bytes_per_device
  )
  assert account["budget_bytes"] == want
  assert account["fits"] and account["bytes"] <= want
  assert size in batch_size.EDIT_BATCH_SIZES and size >= 2  # the budget holds several edits
  # a resume reuses what the folder's earlier run recorded for this method and dataset
  editor = weight_edits.Editor(
      cfg, engine, tok, "tiny", previous={"ft": {"edit_batch_size": {"zsre": 3}}}
  )
  assert editor.batch_size("ft", "zsre", hp, files, None) == (3, None)
  assert editor.batch_size("ft", "counterfact", hp, files, None)[0] == size
  jax.clear_caches()
