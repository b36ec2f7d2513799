"""The generation engine: batched greedy answers and teacher-forced log-probs for one group of
prompts at a time, with the group's shared token prefix computed once.

The runner calls `generate` once per group (language x setup x query type), whose prompts all
start with the same demonstrations. The engine finds their common token prefix, computes its KV
once, sorts the rest of the prompts by length into batches (shape buckets, dummy rows to fill the
last batch), runs a jitted prefill and an on-device greedy loop per batch, and restores the order.
Answers do not depend on batch size, buckets, device count or prefix reuse (tested).

`continuation_logprobs` right after `generate` scores off the generated prompts' own KV: each
generated batch hands back its prompts' KV (`keep_prompt_kv`), and a scored sequence reuses the
KV of the prompt it shares the most leading tokens with, computing only the tokens after them.
Sequences that share too little (or when nothing is kept) are scored afresh on the group prefix.
With rest packing, sequences announced to `generate` (`scoring=`) are scored inside its
programs, off the prompts' KV before decode, and `continuation_logprobs` hands them back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmike_jax.engine import batch as batch_lib
from bmike_jax.engine import buckets as buckets_lib
from bmike_jax.engine import layout as layout_lib
from bmike_jax.engine import memory
from bmike_jax.engine import sharding as sh
from bmike_jax.engine.answer import answer_text
from bmike_jax.engine.batch import (
    KeptScoreBatch,
    PackedBatch,
    PackedRests,
    ScoreBatch,
    SharedPrefix,
    StemmedBatch,
    SuffixBatch,
)
from bmike_jax.engine.programs import Programs
from bmike_jax.engine.state import DecodeState, StopRule
from bmike_jax.model import KVCache, Llama, LlamaConfig
from bmike_jax.model import layer_layout
from bmike_jax.model.row_deltas import DeltaTable, RowDeltas

MAX_DEFAULT_BUCKET = 8192  # default largest length bucket (capped by the model's context)
MAX_IN_FLIGHT = 2  # batches dispatched ahead of the host reading results
_ENGINE_BUDGET = object()  # max_rows' default: the engine's own row_memory_bytes


@dataclasses.dataclass(frozen=True)
class GenerationResult:
  ids: tuple[int, ...]  # generated ids, up to and excluding EOS (a final quote token is kept)
  text: str  # decoded (special tokens skipped) and cut at the first `"`
  truncated_tokens: int = 0  # prompt tokens cut from the left (overlong="truncate_left")


@dataclasses.dataclass
class ThroughputStats:
  """The engine's token account (results.json's `engine`), summed over its calls.

  Sharing levels: a group's shared prefix (its demonstrations) is computed once per group
  (`prefix_tokens`), a record's stem once per batch holding its prompts (`stem_tokens`, part of
  `suffix_tokens`), each prompt's other tokens once per prompt (`suffix_tokens`), each scored
  sequence only its tokens past the prompt it continues (`scored_run_tokens`). `*_padded_tokens`
  count what the programs ran, padding and dummy rows included."""

  prompts: int = 0
  prompt_tokens: int = 0  # tokens of the prompts as given
  prefill_tokens: int = 0  # prompt tokens run: prefix_tokens + suffix_tokens
  prefix_tokens: int = 0  # shared prefixes computed (once per group; reused ones not again)
  suffix_tokens: int = 0  # prompt tokens after the shared prefix computed (stems once)
  stem_tokens: int = 0  # of which record stems, each computed once for the rows sharing it
  prefill_padded_tokens: int = (
      0  # the prefill programs' token slots: Pb per prefix, B x Sb per batch
  )
  # the prompts' tokens with every shared start counted once, per call (layout.prefix_tree_tokens):
  # what sharing at every level (stems included) would run, against prefill_tokens
  prompt_tree_tokens: int = 0
  decode_steps: int = 0  # decode loop iterations (the first answer token comes from prefill)
  decode_row_steps: int = 0  # rows x steps the decode loops ran (finished and dummy rows too)
  generated_tokens: int = 0  # kept answer tokens
  scored_sequences: int = 0
  scored_tokens: int = 0  # prompt + continuation tokens of scored sequences
  scored_on_kept: int = 0  # scored sequences that reused a generated prompt's kept KV
  scored_run_tokens: int = 0  # tokens scoring computed (real ones; kept / prefix KV not rerun)
  scoring_padded_tokens: int = 0  # the scoring programs' token slots (B x buckets per call)
  seconds: float = 0.0  # wall time in generate / continuation_logprobs (compiles included)
  compile_count: int = 0  # programs the engine compiled so far (all calls, not reset)

  def as_dict(self) -> dict:
    """JSON-ready (results.json)."""
    return dict(dataclasses.asdict(self), seconds=round(self.seconds, 3))

  def summary(self) -> str:
    rate = self.prompts / self.seconds if self.seconds else 0.0
    return (
        f"{self.prompts} prompts ({self.prompt_tokens} prompt tokens, {self.prefill_tokens} "
        f"run), {self.generated_tokens} generated tokens, {self.scored_sequences} scored, "
        f"{self.seconds:.2f}s, {rate:.2f} prompts/s"
    )


@dataclasses.dataclass(frozen=True)
class _KeptGroup:
  """The last generated group's prompt KV, kept for the scoring that follows it."""

  prefix: SharedPrefix  # the shared prefix the rows were computed on
  prefix_bucket: int  # Pb (0: none)
  prefix_length: int  # P
  batches: tuple[tuple[int, int, KVCache], ...]  # (B, Sb, KV of B rows and Sb slots) per batch
  prompts: layout_lib.KeptPrompts  # prompt ids -> (batch, row)


class Engine:
  """Greedy generation and continuation scoring for one Llama model on a device mesh.

  config: LlamaConfig (or a Llama module, whose config is used); params: the model's params tree.
  tokenizer: provides decode(ids), eos_ids, quote_token_mask() (see bmike_jax.tokenizer).
  mesh: a ("data", "model") mesh (default: all devices on "data"); batch_size: rows per batch (a
  multiple of the data axis is used); length_buckets: allowed prompt-part lengths (default
  32, 48, 64, 96, ... up to the context, at most 8192); overlong: "error" or "truncate_left".
  prefix_reuse: compute the common token prefix of the prompts of a call once (min_prefix tokens
  at least). dtype: compute and KV-cache dtype (params are cast to it). eos_ids: ids that end an
  answer (default: config.eos_token_ids, else tokenizer.eos_ids). decode_halvings: the decode loop of
  a batch of 16 rows or more moves its still-running rows into a batch half the size, up to this
  many times, once no more than that many are running (finished rows stop costing compute; 0:
  never; see buckets.decode_phases). scan_layers: scan the decoder layers over stacked params
  (True) or unroll them over per-layer params (False); default: scanned on CPU (fast compiles),
  unrolled on GPU / TPU, where a scanned step copies every layer's weights before reading them
  (model/layer_layout.py). Params may come in either layout; they are converted once (numpy params:
  views; params already on the devices in the other layout: both layouts are held there until the
  caller drops its own, so pass host or per-layer params for a model that fills the devices, as the
  runner does). keep_prompt_kv: keep the last generated group's prompt KV (its suffix slots,
  (B rows, Sb slots) per batch, until the next `generate`) so that `continuation_logprobs` after
  it computes only the tokens a scored sequence does not share with its prompt; False: every
  scored sequence's context is computed afresh (less device memory between the two calls).
  kept_kv_bytes: the most bytes of prompt KV kept at once (all devices together; later batches of
  a group are not kept past it, and sequences continuing their prompts are scored afresh or off
  another kept prompt sharing their tokens); default (None): a fifth of the mesh's device memory,
  or 4 GiB where the backend does not say (CPU). An 8B CounterFact group at batch 32 would
  otherwise keep ~64 GiB. batch_shapes: "buckets" (a batch of n rows runs at the smallest of 1, 2,
  4, ... batch_size holding them), "fixed" (always batch_size rows: fewer programs; scoring calls
  that compute their contexts afresh take buckets.FRESH_SCORING_ROWS rows), "auto"
  (buckets on CPU, fixed on GPU / TPU; buckets.BATCH_SHAPES). Answers do not depend on it.
  row_memory_bytes: what the rows of one batch may use on one device; a shape whose estimated rows
  (engine/memory.py) pass it runs fewer rows (`max_rows`: one count per shape, no extra program).
  "auto": memory.row_budget (none where the backend reports no memory, CPU); None: no bound.
  stem_reuse: a stem of min_stem tokens or more that prompts of a call share after the group
  prefix (a record's `New Fact` line, its 4 query types' common start) is computed once for the
  prompts of a batch sharing it, where that runs fewer token slots (layout.plan_generate); answers
  do not depend on it. Off by default: at bucketed shapes it computes ~14% fewer tokens but saves
  ~1-7% of the padded slots, for more programs (BENCHMARKS.md "Record stems"). With
  suffix_packing, a stem is instead a segment of a packed row, run once before its prompts'
  rests, which attend it (layout.pack_batch): no stem rows and no program more than packing
  alone (BENCHMARKS.md "Record stems as packed segments").
  suffix_packing: prefill a batch's suffixes (the rows run whole, or stems and rests) back to back in
  rows of packed_length tokens (at least the batch's suffix bucket), packed_rows rows at a time
  in a loop over the blocks the packing fills, each suffix attending the shared prefix and
  itself only, then gather each one's KV into its own decode row (layout.pack_batch): the
  prefill runs about the suffixes' tokens instead of B x Sb slots, with one program per batch
  shape as without it; answers do not depend on it (BENCHMARKS.md "Packed suffix rows").
  rest_packing: score the sequences continuing a kept prompt with their rests (the tokens past
  the prompt KV they reuse) packed back to back into rows of rest_row_length tokens, each row
  the rests of up to K kept prompts (layout.plan_packed_rests, rest_row_sources: Rb / 16, at
  most 512 / Sb): one scoring program per kept batch shape instead of one per (rows, rest
  bucket), and rows filled instead of one rest padded to its bucket each; a longer rest is
  scored one a row as without it. Log-probs equal to float32 rounding either way (BENCHMARKS.md
  "Packed scoring rests"). prefix_buckets: the lengths a group's shared prefix pads to (default:
  0 and the length buckets; the largest length bucket is always one): fewer mean fewer programs,
  each generate program being keyed by its prefix bucket, for masked prefix slots that every
  query attends; without 0 a group sharing no prefix runs on an empty region of the smallest
  (buckets.prefix_buckets). Where the caller announces its sequences to `generate` (`scoring`,
  as the runner does), the packed rests run inside the generate programs instead, before decode:
  no scoring program at all for them.
  decode_carry: continuous refill of the decode rows, one batch at a time (0: off). A batch's
  decode loop stops once no more than C = this share of its rows (`buckets.carry_rows`) are
  still running; those rows are carried into the next batch of the same program, whose loop runs
  its own rows and them together (B + C rows), so a batch waits for its short answers, not its
  longest; the group's last batch of a shape runs to the end (decode.decode_carrying). Answers
  do not depend on it (rows never see each other; a carried row keeps its slots). Replaces the
  shrinking loop (decode_halvings is then not used); not with per-row weight deltas.
  """

  def __init__(
      self,
      config,
      params,
      tokenizer,
      mesh=None,
      batch_size: int = 8,
      length_buckets: Sequence[int] | None = None,
      max_new_tokens: int = 15,
      prefix_reuse: bool = True,
      overlong: str = "error",
      dtype=jnp.float32,
      min_prefix: int = 16,
      eos_ids: Sequence[int] | None = None,
      decode_halvings: int = 2,
      scan_layers: bool | None = None,
      keep_prompt_kv: bool = True,
      kept_kv_bytes: int | None = None,
      batch_shapes: str = "auto",
      row_memory_bytes: int | str | None = "auto",
      stem_reuse: bool = False,
      min_stem: int = 4,
      suffix_packing: bool = False,
      packed_length: int = 512,
      packed_rows: int = 4,
      rest_packing: bool = False,
      rest_row_length: int = 64,
      prefix_buckets: Sequence[int] | None = None,
      decode_carry: float = 0.0,
  ):
    if isinstance(config, Llama):
      config = config.config
    if not isinstance(config, LlamaConfig):
      raise TypeError(f"config must be a LlamaConfig, got {type(config).__name__}")
    if overlong not in buckets_lib.OVERLONG_POLICIES:
      raise ValueError(f"overlong must be one of {buckets_lib.OVERLONG_POLICIES}, got {overlong!r}")
    if max_new_tokens < 1:
      raise ValueError("max_new_tokens must be >= 1")
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh if mesh is not None else sh.make_mesh()
    self.max_new_tokens = max_new_tokens
    self.prefix_reuse = prefix_reuse
    self.keep_prompt_kv = keep_prompt_kv
    self.kept_kv_bytes = (
        kept_kv_bytes if kept_kv_bytes is not None else memory.kept_kv_budget(self.mesh)
    )
    # bytes of one kept row-slot: K and V of every layer
    self._dtype_bytes = jnp.dtype(dtype).itemsize
    self.weight_bytes = memory.weight_bytes(config, dtype)  # all devices together
    self._kv_slot_bytes = memory.kv_slot_bytes(config, self._dtype_bytes)
    self.overlong = overlong
    self.min_prefix = min_prefix
    self.context = config.max_position_embeddings
    self.length_buckets = tuple(
        sorted(
            length_buckets
            or buckets_lib.default_length_buckets(min(self.context, MAX_DEFAULT_BUCKET))
        )
    )
    self.continuation_buckets = buckets_lib.continuation_buckets(self.length_buckets[-1])
    self.prefix_buckets = buckets_lib.prefix_buckets(prefix_buckets, self.length_buckets)
    if rest_packing and rest_row_length < 1:
      raise ValueError(f"rest_row_length must be >= 1, got {rest_row_length}")
    self.rest_row_length = rest_row_length if rest_packing else 0  # Rb of packed rests; 0: off
    data = self.mesh.shape[sh.DATA]
    self.batch_size = -(-batch_size // data) * data
    platform = self.mesh.devices.flat[0].platform
    if batch_shapes not in buckets_lib.BATCH_SHAPES:
      raise ValueError(
          f"batch_shapes must be one of {buckets_lib.BATCH_SHAPES}, got {batch_shapes!r}"
      )
    if batch_shapes == "auto":
      batch_shapes = buckets_lib.default_batch_shapes(platform)
    self.batch_shapes = batch_shapes
    self.plan_settings = layout_lib.plan_settings(
        batch_size=self.batch_size,
        batch_shapes=batch_shapes,
        length_buckets=self.length_buckets,
        data_axis=data,
        stem_reuse=stem_reuse,
        min_stem=min_stem,
        suffix_packing=suffix_packing,
        packed_length=packed_length,
        packed_rows=packed_rows,
    )
    self.batch_buckets = self.plan_settings.batch_buckets
    # the decode loop's shrinking sizes live inside one program, whatever the batch shapes
    shrink_sizes = buckets_lib.batch_buckets(self.batch_size, multiple_of=data)
    auto_rows = row_memory_bytes == "auto"
    if auto_rows:
      row_memory_bytes = memory.row_budget(
          self.mesh,
          weight_bytes=self.weight_bytes,
          kept_kv_bytes=self.kept_kv_bytes if keep_prompt_kv else 0,
      )
    self.row_memory_bytes = row_memory_bytes  # per device; None: rows are not bounded
    # the per-device share of kept prompt KV taken off row_memory_bytes ("auto" only)
    self._kept_share = (
        self.kept_kv_bytes // self.mesh.devices.size
        if auto_rows and keep_prompt_kv and row_memory_bytes is not None
        else 0
    )
    self._row_sizes = shrink_sizes
    dtype = jnp.dtype(dtype)
    if scan_layers is None:  # accelerators: per-layer weights, read once per step (layer_layout.py)
      scan_layers = layer_layout.default_scan_layers(platform)
    self.scan_layers = bool(scan_layers)
    if self.scan_layers != layer_layout.is_stacked(params):
      params = (layer_layout.stack_layers if self.scan_layers else layer_layout.unstack_layers)(
          params, config.num_layers
      )
    self.model = Llama(config, dtype=dtype, param_dtype=dtype, scan_layers=self.scan_layers)
    params = jax.tree_util.tree_map(
        lambda x: x.astype(dtype)
        if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype
        else x,
        params,
    )
    self.params, params_shardings = sh.shard_params(params, self.mesh, config)
    if decode_halvings < 0:
      raise ValueError(f"decode_halvings must be >= 0, got {decode_halvings}")
    if not 0 <= decode_carry <= 1:
      raise ValueError(f"decode_carry must be a share of a batch in [0, 1], got {decode_carry}")
    self.decode_carry = float(decode_carry)
    self.programs = Programs(
        self.model,
        self.mesh,
        params_shardings,
        max_new_tokens,
        lambda b: buckets_lib.decode_phases(b, shrink_sizes, decode_halvings),
        lambda b: buckets_lib.carry_rows(b, decode_carry, data),
    )
    self.stop = self._stop_rule(eos_ids)
    self.stats = ThroughputStats()
    self._last_prefix = (
        None  # (prefix ids, KV): a group scored right after it is generated reuses it
    )
    self._kept: _KeptGroup | None = None  # the last generated group's prompt KV
    # log-probs scored inside the last generate call: (context, continuation) -> [len(cont)]
    self._scored: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray] = {}
    self._empty_prefixes: dict = {}  # Pb -> an empty prefix KV on the mesh (_empty_prefix)
    self._empty_rests: dict = {}  # (R, NB, Rb, K) -> an empty PackedRests on the mesh
    self._empty_carries: dict = {}  # (C, S) -> a carry holding no row on the mesh
    self._lane_prompts: list = []  # the prompt each row of the carry being collected holds

  # Setup ---------------------------------------------------------------------------------------

  def _stop_rule(self, eos_ids) -> StopRule:
    # Default: what HF generate stops on (the model's generation config), else the tokenizer's.
    eos = list(
        eos_ids
        if eos_ids is not None
        else (self.config.eos_token_ids or getattr(self.tokenizer, "eos_ids", None) or ())
    )
    if not eos:
      raise ValueError("no EOS ids: the tokenizer and the config name none; pass eos_ids")
    mask = np.zeros((self.config.vocab_size,), bool)
    quote = np.asarray(self.tokenizer.quote_token_mask(), bool)
    mask[: min(len(quote), len(mask))] = quote[: len(mask)]
    repl = sh.replicated(self.mesh)
    return StopRule(
        eos_ids=sh.to_global(np.asarray(eos, np.int32), repl), quote_mask=sh.to_global(mask, repl)
    )

  @property
  def compile_count(self) -> int:
    """Programs compiled so far (each distinct shape bucket combination compiles once)."""
    return self.programs.compile_count

  def max_rows(
      self, prefix_bucket: int, suffix_bucket: int, extra: int, budget=_ENGINE_BUDGET
  ) -> int:
    """The most rows a batch of this shape may hold: the batch size, lowered where the estimated
    memory of its rows (engine/memory.py) passes `row_memory_bytes` (or `budget`, bytes per
    device); the same for every batch of the shape, so it adds no program."""
    budget = self.row_memory_bytes if budget is _ENGINE_BUDGET else budget
    if budget is None:
      return self.batch_size
    if self.rest_row_length:  # a block of packed rests scored inside the generate program
      rb = self.rest_row_length
      budget -= memory.rest_block_bytes(
          self.config,
          self._dtype_bytes,
          prefix_bucket=prefix_bucket,
          kept_slots=layout_lib.rest_row_sources(rb, suffix_bucket) * suffix_bucket,
          tokens=buckets_lib.scoring_rows(self.batch_size, rb) * rb,
          row_length=rb,
          model_axis=self.mesh.shape[sh.MODEL],
      )
    per_row = memory.row_bytes(
        self.config,
        self._dtype_bytes,
        prefix_bucket=prefix_bucket,
        suffix_bucket=suffix_bucket,
        slots=layout_lib.cache_length(suffix_bucket, extra),
        model_axis=self.mesh.shape[sh.MODEL],
        packed=self.plan_settings.suffix_packing,
        carry_share=self.decode_carry,
    )
    return memory.rows_that_fit(self._row_sizes, per_row, budget, self.mesh.shape[sh.DATA])

  def reset_stats(self) -> None:
    """Zero the throughput counters (`engine.stats`: fields; `.as_dict()` for JSON)."""
    self.stats = ThroughputStats(compile_count=self.compile_count)

  # Shared pieces -------------------------------------------------------------------------------

  def _fit(self, prompts, names, reserve: Sequence[int]):
    names = list(names) if names is not None else [str(i) for i in range(len(prompts))]
    if len(names) != len(prompts):
      raise ValueError(f"{len(names)} prompt names for {len(prompts)} prompts")
    bos = getattr(self.tokenizer, "bos_id", None)
    out = []
    for ids, name, extra in zip(prompts, names, reserve):
      if len(ids) == 0:
        raise ValueError(f"prompt {name!r} is empty")
      keep_first = 1 if bos is not None and ids[0] == bos else 0
      out.append(
          buckets_lib.fit_prompt(
              ids,
              name,
              max_bucket=self.length_buckets[-1],
              context=self.context - extra,
              overlong=self.overlong,
              keep_first=keep_first,
          )
      )
    return out

  def _prefix(self, prompts, group_prefix: bool | None):
    """(group layout, SharedPrefix (kv None without reuse), suffixes).

    The last prefix's KV is kept: the likelihood scoring of a group right after its generation
    (same demonstrations) does not recompute it; the KV is the same array, so are the results."""
    reuse = self.prefix_reuse if group_prefix is None else group_prefix
    group = layout_lib.plan_group(
        prompts, reuse=reuse, length_buckets=self.prefix_buckets, min_prefix=self.min_prefix
    )
    pb = group.prefix_bucket
    repl = sh.replicated(self.mesh)
    p = sh.to_global(np.asarray(group.prefix_length, np.int32), repl)
    suffixes = [ids[group.prefix_length :] for ids in prompts]
    if pb == 0:
      return group, SharedPrefix(kv=None, length=p), suffixes
    if group.prefix_length == 0:  # an empty prefix region: every slot masked, no program run
      return group, SharedPrefix(kv=self._empty_prefix(pb), length=p), suffixes
    if self._last_prefix is not None and self._last_prefix[0] == group.prefix:
      return group, SharedPrefix(kv=self._last_prefix[1], length=p), suffixes
    tokens, _, _ = layout_lib.pad_rows([group.prefix], 1, pb)
    kv = self.programs.prefix(pb)(
        params=self.params, tokens=sh.to_global(tokens, repl), prefix_length=p
    )
    self._last_prefix = (group.prefix, kv)
    self.stats.prefill_tokens += group.prefix_length
    self.stats.prefix_tokens += group.prefix_length
    self.stats.prefill_padded_tokens += pb
    return group, SharedPrefix(kv=kv, length=p), suffixes

  def _empty_prefix(self, pb: int) -> KVCache:
    """A prefix KV of Pb zero slots on the mesh (placed once per Pb): the region of a group
    without a shared prefix where 0 is not a prefix bucket; its mask (length 0) hides every slot."""
    if pb not in self._empty_prefixes:
      shapes = jax.eval_shape(
          lambda: KVCache.zeros(
              self.model.config, 1, pb, self.model.dtype, per_layer=not self.model.scan_layers
          )
      )
      self._empty_prefixes[pb] = jax.tree_util.tree_map(
          lambda s, where: sh.to_global(np.zeros(s.shape, s.dtype), where),
          shapes,
          self.programs.prefix_shardings(pb).kv,
      )
    return self._empty_prefixes[pb]

  # Generation ----------------------------------------------------------------------------------

  def generate(
      self,
      prompts_ids: Sequence[Sequence[int]],
      prompt_names: Sequence[str] | None = None,
      group_prefix: bool | None = None,
      *,
      tables: Mapping[str, DeltaTable] | None = None,
      prompt_edits: Sequence[int] | None = None,
      held_bytes_per_device: int = 0,
      scoring: tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]] | None = None,
  ) -> list[GenerationResult]:
    """Greedy answers (at most max_new_tokens, stopped at EOS or a quote token) for one group.

    tables, prompt_edits: prompt i is asked on the engine's params plus edit prompt_edits[i] of
    the E edits' per-row weight delta tables (editing/delta.row_tables; model/row_deltas.py),
    so prompts of several edited models share batches. Such a call shares no prefix or stem
    between prompts (their KV depends on the edit) and keeps no prompt KV (nothing scores an
    edited model's prompts); what the caller holds on each device meanwhile
    (`held_bytes_per_device`, e.g. the weight editor's float32 copy) and the tables come off the
    rows' memory share, and the kept KV's share goes to them.

    scoring: (contexts, continuations) the caller will score with `continuation_logprobs` right
    after this call. With rest packing, those continuing this call's prompts by at most Rb
    tokens are scored inside the generate programs, off each batch's prompt KV after prefill and
    before decode (no scoring program, no kept copy read back); `continuation_logprobs` then
    returns them as they are and computes only the others. Values equal to float32 rounding
    either way (the same arithmetic as the score_packed program)."""
    self._scored = {}
    self._lane_prompts = []
    if not prompts_ids:
      return []
    t0 = time.perf_counter()
    compiled_before = self.compile_count
    self._kept = None  # the previous group's KV is not scored any more: free it first
    prompts = self._fit(prompts_ids, prompt_names, [self.max_new_tokens] * len(prompts_ids))
    settings, budget, edits = self.plan_settings, _ENGINE_BUDGET, None
    if tables is not None:
      edits = self._edits(tables, prompt_edits, len(prompts))
      group_prefix = False
      settings = dataclasses.replace(settings, stem_reuse=False, suffix_packing=False)
      if self.row_memory_bytes is not None:
        budget = (
            self.row_memory_bytes
            + self._kept_share
            - held_bytes_per_device
            - memory.device_bytes(edits[0])
        )
    elif prompt_edits is not None:
      raise ValueError("prompt_edits without tables")
    group, prefix, suffixes = self._prefix(prompts, group_prefix)
    plen, pb = group.prefix_length, group.prefix_bucket
    plans = layout_lib.plan_generate(
        suffixes,
        settings,
        max_rows=lambda sb, _: self.max_rows(pb, sb, self.max_new_tokens, budget),
        prefix_bucket=pb,
    )
    results: list[GenerationResult | None] = [None] * len(prompts)
    pending, kept, kept_bytes = [], [], 0
    keep = self.keep_prompt_kv and edits is None
    in_program, ctx, cc = {}, [], []  # generated batch -> the PackedRestPlan its program scores
    if scoring is not None and self.rest_row_length and edits is None:
      in_program, ctx, cc = self._plan_in_program(prompts, plans, plen, scoring)
    carry = None  # the rows the last batch carried on (decode_carry), on device
    for j, plan in enumerate(plans):
      rests = in_program.get(j) if edits is None and self.rest_row_length else False
      carrying, continued = None, carry is not None
      if edits is None and self.programs.carry_rows(plan.batch):
        key = plan.program_key(pb)
        final = j + 1 == len(plans) or plans[j + 1].program_key(pb) != key
        if carry is None:
          carry = self._empty_carry(plan)
        carrying = (carry, final)
      out, num_out, kv, steps, *scored = self._run_generate(
          plan, suffixes, prefix, pb, edits, rests, carrying
      )
      lanes = None
      if carrying is not None:
        *scored, carry_out, lane_rows = scored
        lanes = (lane_rows, carry_out.done, continued)
        carry = None if carrying[1] else carry_out
      self.stats.prefill_padded_tokens += plan.padded_slots()
      size = plan.batch * plan.prompt_slots * self._kv_slot_bytes
      if keep and len(kept) == j and kept_bytes + size <= self.kept_kv_bytes:
        kept.append((plan.batch, plan.prompt_slots, kv))  # batches 0..j-1 kept: j is the next
        kept_bytes += size
      del kv
      pending.append(
          (plan, out, num_out, steps, (rests, ctx, cc) if rests else None, lanes, *scored)
      )
      if len(pending) > MAX_IN_FLIGHT:
        self._collect(pending.pop(0), results)
    for item in pending:
      self._collect(item, results)
    if kept:
      places = {}  # the prompts of the kept batches (the first len(kept) plans)
      for j, plan in enumerate(plans[: len(kept)]):
        for r, i in enumerate(plan.rows):
          places[i] = (j, r)
      self._kept = _KeptGroup(
          prefix=prefix,
          prefix_bucket=pb,
          prefix_length=plen,
          batches=tuple(kept),
          prompts=layout_lib.KeptPrompts.build(
              [prompts[i] for i in sorted(places)], [places[i] for i in sorted(places)]
          ),
      )
    results = [
        r
        if len(ids) == len(kept)
        else dataclasses.replace(r, truncated_tokens=len(ids) - len(kept))
        for r, ids, kept in zip(results, prompts_ids, prompts)
    ]
    self.stats.prompts += len(prompts)
    self.stats.prompt_tokens += sum(len(x) for x in prompts)
    self.stats.prompt_tree_tokens += layout_lib.prefix_tree_tokens(prompts)
    run = sum(len(s) for s in suffixes) - sum(p.stem_tokens_saved() for p in plans)
    self.stats.stem_tokens += sum(p.stem_tokens() for p in plans)
    self.stats.prefill_tokens += run
    self.stats.suffix_tokens += run
    self.stats.generated_tokens += sum(len(r.ids) for r in results)
    self.stats.seconds += time.perf_counter() - t0
    self.stats.compile_count = self.compile_count
    logging.info(
        "engine.generate: %d prompts, prefix %d tokens (bucket %d), %d batches, "
        "%d new compiles (%d total), %.2fs",
        len(prompts),
        plen,
        pb,
        len(plans),
        self.compile_count - compiled_before,
        self.compile_count,
        time.perf_counter() - t0,
    )
    logging.info("engine throughput: %s", self.stats.summary())
    return results

  def _edits(self, tables, prompt_edits, count: int):
    """(the tables placed on the mesh, replicated; each prompt's edit [count] int32), checked."""
    if prompt_edits is None or len(prompt_edits) != count:
      raise ValueError(
          f"delta tables need one edit index per prompt: {count} prompts, "
          f"{None if prompt_edits is None else len(prompt_edits)} indices"
      )
    if not tables:
      raise ValueError("no delta tables: pass tables=None to ask the unedited model")
    sizes = {t.num_edits for t in tables.values()}
    if len(sizes) != 1:
      raise ValueError(f"delta tables of different edit counts {sorted(sizes)}")
    (num,) = sizes
    edits = np.asarray(prompt_edits, np.int32)
    if edits.size and (edits.min() < 0 or edits.max() >= num):
      raise ValueError(f"prompt_edits must lie in [0, {num}), got {edits.min()}..{edits.max()}")
    return jax.device_put(dict(tables), sh.replicated(self.mesh)), edits

  def _run_generate(
      self,
      plan: layout_lib.BatchPlan,
      suffixes,
      prefix: SharedPrefix,
      pb: int,
      edits=None,
      rests: layout_lib.PackedRestPlan | None | bool = False,
      carrying=None,
  ):
    """Dispatch one batch (whole suffixes, stems and rests, or packed suffixes): (answers, their
    lengths, the prompts' KV (B rows, plan.prompt_slots), decode steps per phase[, log-probs
    of the rests scored inside the program]), on device. edits: (placed delta tables, each
    prompt's edit) or None. rests: the PackedRestPlan the program scores, None (a program that
    scores, given nothing: the engine's rest packing is on) or False (a program without).
    carrying: (the rows carried into this batch, whether it is its program's last in the call:
    decode to the end) or None (decode_carry off); the program then also returns the rows it
    carries on and the rows of its state they are (decode.decode_carrying)."""
    slots = layout_lib.cache_length(plan.prompt_slots, self.max_new_tokens)
    extra, spec = {}, None
    if rests is not False:
      spec, placed = self._packed_rests(plan.batch, plan.prompt_slots, rests)
      extra = {"rests_in": placed}
    if carrying is not None:
      extra.update(carry=carrying[0], final=carrying[1])
    if edits is not None and (plan.stem_rows or plan.packed_rows):
      raise AssertionError("a plan with stems or packed rows in a call with delta tables")
    if plan.packed_rows:
      blocks = layout_lib.packed_row_count(plan.batch, plan.packed_rows) // plan.packed_rows
      rows = batch_lib.place(
          PackedBatch.build(
              [suffixes[i] for i in plan.rows],
              plan.segments,
              batch=plan.batch,
              suffix_bucket=plan.suffix_bucket,
              packed_rows=plan.packed_rows,
              blocks=blocks,
              packed_length=plan.packed_length,
              row_stems=plan.row_stems,
              stem_lengths=[n for _, n in plan.stems],
              stem_segments=plan.stem_segments,
          ),
          PackedBatch.spec(
              batch=plan.batch,
              suffix_bucket=plan.suffix_bucket,
              packed_rows=plan.packed_rows,
              blocks=blocks,
              packed_length=plan.packed_length,
          ),
          self.mesh,
      )
      call = self.programs.generate_packed(
          plan.batch, pb, plan.packed_rows, plan.packed_length, plan.suffix_bucket, slots, spec
      )
      return call(params=self.params, prefix=prefix, rows=rows, stop=self.stop, **extra)
    if not plan.stem_rows:
      tokens, lengths, active = layout_lib.pad_rows(
          [suffixes[i] for i in plan.rows], plan.batch, plan.suffix_bucket
      )
      rows = batch_lib.place(
          SuffixBatch(tokens=tokens, lengths=lengths, active=active),
          SuffixBatch.spec(batch=plan.batch, suffix_bucket=plan.suffix_bucket),
          self.mesh,
      )
      if edits is None:
        call = self.programs.generate(plan.batch, pb, plan.suffix_bucket, slots, rests=spec)
        return call(params=self.params, prefix=prefix, rows=rows, stop=self.stop, **extra)
      tables, prompt_edits = edits
      index = np.zeros((plan.batch,), np.int32)  # dummy rows: edit 0
      index[: len(plan.rows)] = prompt_edits[list(plan.rows)]
      row_deltas = RowDeltas(
          tables=tables, index=sh.to_global(index, sh.batch_sharding(self.mesh, 1, plan.batch))
      )
      call = self.programs.generate(plan.batch, pb, plan.suffix_bucket, slots, tables=tables)
      return call(params=self.params, prefix=prefix, rows=rows, stop=self.stop, deltas=row_deltas)
    stem_tokens, stem_lengths, _ = layout_lib.pad_rows(
        [suffixes[i][:n] for i, n in plan.stems], plan.stem_rows, plan.stem_bucket
    )
    row_stems = np.zeros((plan.batch,), np.int32)
    row_stem_lengths = np.zeros((plan.batch,), np.int32)
    rests = []
    for r, (i, k) in enumerate(zip(plan.rows, plan.row_stems)):
      n = plan.stems[k][1] if k >= 0 else 0
      row_stems[r], row_stem_lengths[r] = max(k, 0), n
      rests.append(suffixes[i][n:])
    tokens, lengths, active = layout_lib.pad_rows(rests, plan.batch, plan.suffix_bucket)
    rows = batch_lib.place(
        StemmedBatch(
            stem_tokens=stem_tokens,
            stem_lengths=stem_lengths,
            row_stems=row_stems,
            row_stem_lengths=row_stem_lengths,
            tokens=tokens,
            lengths=lengths,
            active=active,
        ),
        StemmedBatch.spec(
            batch=plan.batch,
            suffix_bucket=plan.suffix_bucket,
            stem_rows=plan.stem_rows,
            stem_bucket=plan.stem_bucket,
        ),
        self.mesh,
    )
    call = self.programs.generate_stemmed(
        plan.batch, pb, plan.stem_rows, plan.stem_bucket, plan.suffix_bucket, slots, spec
    )
    return call(params=self.params, prefix=prefix, rows=rows, stop=self.stop, **extra)

  def _plan_in_program(self, prompts, plans, prefix_length: int, scoring):
    """({generated batch: the PackedRestPlan its program scores}, the contexts (fitted) and
    continuations its rests index) for the sequences of `scoring` that continue the call's
    prompts (`layout.in_program_rests`); a sequence that does not fit (too long:
    `continuation_logprobs` says so) is left to `continuation_logprobs`."""
    contexts, conts = scoring
    if len(contexts) != len(conts):
      raise ValueError(f"scoring: {len(contexts)} contexts but {len(conts)} continuations")
    ctx, cc = [], []
    for x, c in zip(contexts, conts):
      if len(c) > self.continuation_buckets[-1]:
        continue
      try:
        (fitted,) = self._fit([x], None, [len(c)])
      except buckets_lib.PromptTooLongError:
        continue
      ctx.append(fitted)
      cc.append(list(c))
    if not ctx:
      return {}, ctx, cc
    places = {i: (j, r) for j, plan in enumerate(plans) for r, i in enumerate(plan.rows)}
    order = sorted(places)
    kept = layout_lib.KeptPrompts.build([prompts[i] for i in order], [places[i] for i in order])
    found = layout_lib.in_program_rests(
        ctx,
        cc,
        kept=kept,
        prefix_length=prefix_length,
        batches=[p.batch for p in plans],
        rest_buckets=self.continuation_buckets,
        rest_row_length=self.rest_row_length,
        slots=[p.prompt_slots for p in plans],
        multiple_of=self.mesh.shape[sh.DATA],
    )
    return found, ctx, cc

  def _packed_rests(self, batch: int, prompt_slots: int, plan=None):
    """(spec, arrays placed on the mesh) of the PackedRests a kept batch of (B, Sb) takes:
    `plan`'s rests, or none (its loop then runs no block; placed once per shape, since every
    batch of a group without likelihoods passes one)."""
    rb = self.rest_row_length
    k = layout_lib.rest_row_sources(rb, prompt_slots)
    r, nb = layout_lib.rest_blocks(batch, rb, k, self.mesh.shape[sh.DATA])
    spec = PackedRests.spec(block_rows=r, blocks=nb, row_length=rb, sources=k)
    if plan is not None:
      return spec, batch_lib.place(PackedRests.build(plan), spec, self.mesh)
    if (r, nb, rb, k) not in self._empty_rests:
      self._empty_rests[r, nb, rb, k] = batch_lib.place(PackedRests.empty(spec), spec, self.mesh)
    return spec, self._empty_rests[r, nb, rb, k]

  def _read_packed(self, plan: layout_lib.PackedRestPlan, logp, conts):
    """[(sequence index, log-probs [len(cont)] float32)] of a packed-rests call's output
    [R, NB, Rb] (conts: the continuations its rests index); counts them as scored off kept KV."""
    logp = np.asarray(logp)
    out = []
    for x, (g, first, _) in zip(plan.rests, plan.places):
      at, m, n = (g % plan.block_rows, g // plan.block_rows), len(x.tokens), len(conts[x.index])
      out.append((x.index, logp[at][first + m - n : first + m].astype(np.float32)))
      self.stats.scored_on_kept += 1
      self.stats.scored_run_tokens += m
    self.stats.scoring_padded_tokens += plan.padded_slots()
    return out

  def _empty_carry(self, plan: layout_lib.BatchPlan) -> DecodeState:
    """A carry of plan's program holding no row (every row done), placed once per (C, S)."""
    c = self.programs.carry_rows(plan.batch)
    s = layout_lib.cache_length(plan.prompt_slots, self.max_new_tokens)
    if (c, s) not in self._empty_carries:
      i32 = jnp.int32
      shapes = jax.eval_shape(
          lambda: DecodeState(
              cache=KVCache.zeros(
                  self.config, c, s, self.model.dtype, per_layer=not self.model.scan_layers
              ),
              key_valid=jnp.zeros((c, s), bool),
              next_position=jnp.zeros((c,), i32),
              write_index=jnp.zeros((c,), i32),
              last_token=jnp.zeros((c,), i32),
              out=jnp.zeros((c, self.max_new_tokens), i32),
              num_out=jnp.zeros((c,), i32),
              done=jnp.zeros((c,), bool),
              step=jnp.zeros((c,), i32),
          )
      )
      where = self.programs.state_shardings(c, per_row=True)
      zeros = jax.tree_util.tree_map(
          lambda x, w: sh.to_global(np.zeros(x.shape, x.dtype), w), shapes, where
      )
      # every row finished: it runs along and is never reported
      done = sh.to_global(np.ones((c,), bool), where.done)
      self._empty_carries[c, s] = zeros.replace(done=done)
    return self._empty_carries[c, s]

  def _collect(self, item, results) -> None:
    plan, out, num, steps, rests, lanes, *scored = item
    if rests is not None:  # scored inside the program: kept for continuation_logprobs
      rest_plan, ctx, cc = rests
      for i, values in self._read_packed(rest_plan, scored[0], cc):
        self._scored[tuple(ctx[i]), tuple(cc[i])] = values
    out, num, steps = np.asarray(out), np.asarray(num), np.asarray(steps)
    self.stats.decode_steps += int(steps.sum())
    phases = self.programs.decode_phases(plan.batch)
    rows = list(plan.rows) + [None] * (plan.batch - len(plan.rows))  # the prompt of each row
    carried = set()  # rows of the state still running, handed on to the next batch
    if lanes is not None:  # decode_carry: the batch's rows, then the rows carried into it
      lane_rows, lane_done, continued = (np.asarray(lanes[0]), np.asarray(lanes[1]), lanes[2])
      incoming = self._lane_prompts if continued else [None] * len(lane_rows)
      rows += incoming
      phases = (len(rows),)
      carried = {int(r) for r, done in zip(lane_rows, lane_done) if not done}
      self._lane_prompts = [None if done else rows[r] for r, done in zip(lane_rows, lane_done)]
    self.stats.decode_row_steps += sum(int(b) * int(n) for b, n in zip(phases, steps))
    for r, i in enumerate(rows):
      if i is not None and r not in carried:
        ids = tuple(int(x) for x in out[r, : num[r]])
        results[i] = GenerationResult(ids=ids, text=answer_text(self.tokenizer, ids))

  # Scoring -------------------------------------------------------------------------------------

  def continuation_logprobs(
      self,
      prompt_ids_list: Sequence[Sequence[int]],
      continuation_ids_list: Sequence[Sequence[int]],
      prompt_names: Sequence[str] | None = None,
      group_prefix: bool | None = None,
  ) -> list[np.ndarray]:
    """log p(continuation token | prompt, earlier continuation tokens), float32 [len(cont)] each."""
    if len(prompt_ids_list) != len(continuation_ids_list):
      raise ValueError(
          f"{len(prompt_ids_list)} prompts but {len(continuation_ids_list)} " "continuations"
      )
    if not prompt_ids_list:
      return []
    t0 = time.perf_counter()
    conts = [list(c) for c in continuation_ids_list]
    max_cont = self.continuation_buckets[-1]
    for i, c in enumerate(conts):
      if len(c) > max_cont:
        raise buckets_lib.PromptTooLongError(
            f"continuation of {prompt_names[i] if prompt_names else i}",
            len(c),
            max_cont,
            "largest length bucket",
        )
    prompts = self._fit(prompt_ids_list, prompt_names, [len(c) for c in conts])
    out: list[np.ndarray | None] = [None] * len(prompts)
    for i, (x, c) in enumerate(zip(prompts, conts)):  # scored inside the last generate call
      out[i] = self._scored.get((tuple(x), tuple(c)))
    left = [i for i, lp in enumerate(out) if lp is None]
    fresh = left
    if self._kept is not None and left:
      got: list[np.ndarray | None] = [None] * len(left)
      fresh = [
          left[i]
          for i in self._score_on_kept([prompts[i] for i in left], [conts[i] for i in left], got)
      ]
      for i, lp in zip(left, got):
        out[i] = lp
    if fresh:
      got = self._score_fresh([prompts[i] for i in fresh], [conts[i] for i in fresh], group_prefix)
      for i, lp in zip(fresh, got):
        out[i] = lp
    self.stats.scored_sequences += len(prompts)
    self.stats.scored_tokens += sum(len(x) for x in prompts) + sum(len(c) for c in conts)
    self.stats.seconds += time.perf_counter() - t0
    self.stats.compile_count = self.compile_count
    return out

  def _score_fresh(self, prompts, conts, group_prefix) -> list[np.ndarray]:
    """Each context computed on the group's shared prefix, then its continuation."""
    group, prefix, suffixes = self._prefix(prompts, group_prefix)
    pb = group.prefix_bucket
    rows = buckets_lib.fresh_scoring_rows(
        self.batch_size, self.batch_shapes, self.mesh.shape[sh.DATA]
    )
    plans = layout_lib.plan_batches(
        [len(s) for s in suffixes],
        batch_size=rows[-1],
        batch_buckets=rows,
        length_buckets=self.length_buckets,
        extra_lengths=[len(c) for c in conts],
        extra_buckets=buckets_lib.fresh_continuation_buckets(self.prefix_buckets),
        max_rows=lambda sb, cb: self.max_rows(pb, sb, cb),
    )
    pending = []
    for plan in plans:
      tokens, lengths, _ = layout_lib.pad_rows(
          [suffixes[i] for i in plan.rows], plan.batch, plan.suffix_bucket
      )
      cont, cont_lengths, _ = layout_lib.pad_rows(
          [conts[i] for i in plan.rows], plan.batch, plan.extra_bucket, min_length=0
      )
      slots = layout_lib.cache_length(plan.suffix_bucket, plan.extra_bucket)
      rows = batch_lib.place(
          ScoreBatch(
              tokens=tokens, lengths=lengths, continuations=cont, continuation_lengths=cont_lengths
          ),
          ScoreBatch.spec(
              batch=plan.batch,
              suffix_bucket=plan.suffix_bucket,
              continuation_bucket=plan.extra_bucket,
          ),
          self.mesh,
      )
      logp = self.programs.score(plan.batch, pb, plan.suffix_bucket, plan.extra_bucket, slots)(
          params=self.params, prefix=prefix, rows=rows
      )
      pending.append((plan, logp))
      self.stats.scoring_padded_tokens += plan.batch * (plan.suffix_bucket + plan.extra_bucket - 1)
    out: list[np.ndarray | None] = [None] * len(prompts)
    for plan, logp in pending:
      logp = np.asarray(logp)
      for r, i in enumerate(plan.rows):
        out[i] = logp[r, : len(conts[i])].astype(np.float32)
    # The suffix, then the continuation but its last token (whose logits nothing reads).
    self.stats.scored_run_tokens += sum(len(x) for x in suffixes)
    self.stats.scored_run_tokens += sum(max(len(c) - 1, 0) for c in conts)
    return out

  def _score_on_kept(self, prompts, conts, out) -> list[int]:
    """Score the sequences that continue a kept prompt (into `out`; layout.plan_kept_scoring
    says which and how); return the indices of the others."""
    kept = self._kept
    packed, plans, fresh = layout_lib.plan_scoring(
        prompts,
        conts,
        kept=kept.prompts,
        prefix_length=kept.prefix_length,
        batches=[b for b, _, _ in kept.batches],
        rest_buckets=self.continuation_buckets,
        rest_row_length=self.rest_row_length,
        slots=[sb for _, sb, _ in kept.batches],
        multiple_of=self.mesh.shape[sh.DATA],
    )
    packed_pending = []
    for plan in packed:
      bk, sb, kv = kept.batches[plan.source_batch]
      rb, r, nb, k = plan.row_length, plan.block_rows, plan.blocks, plan.sources_per_row
      _, rows = self._packed_rests(bk, sb, plan)  # the shapes (r, nb, rb, k) follow from bk, sb
      logp = self.programs.score_packed(bk, kept.prefix_bucket, sb, r, nb, rb, k)(
          params=self.params, prefix=kept.prefix, kept=kv, rows=rows
      )
      packed_pending.append((plan, logp))
    pending = []
    for plan in plans:
      bk, sb, kv = kept.batches[plan.source_batch]
      b, rb = plan.batch, plan.rest_bucket
      tokens, lengths, _ = layout_lib.pad_rows(plan.tokens, b, rb)
      targets, _, _ = layout_lib.pad_rows(plan.targets, b, rb)
      source_rows, reused = np.zeros((b,), np.int32), np.zeros((b,), np.int32)
      source_rows[: len(plan.indices)] = plan.source_rows
      reused[: len(plan.indices)] = plan.reused
      rows = batch_lib.place(
          KeptScoreBatch(
              source_rows=source_rows,
              reused=reused,
              tokens=tokens,
              targets=targets,
              lengths=lengths,
          ),
          KeptScoreBatch.spec(batch=b, rest_bucket=rb),
          self.mesh,
      )
      logp = self.programs.score_kept(
          b, kept.prefix_bucket, sb, rb, layout_lib.cache_length(sb, rb), kept_batch=bk
      )(params=self.params, prefix=kept.prefix, kept=kv, rows=rows)
      pending.append((plan, logp))
      self.stats.scoring_padded_tokens += b * rb
    for plan, logp in pending:
      logp = np.asarray(logp)
      for r, (i, tokens) in enumerate(zip(plan.indices, plan.tokens)):
        m, n = len(tokens), len(conts[i])
        out[i] = logp[r, m - n : m].astype(np.float32)
        self.stats.scored_on_kept += 1
        self.stats.scored_run_tokens += m
    for plan, logp in packed_pending:
      for i, values in self._read_packed(plan, logp, conts):
        out[i] = values
    return fresh
