"""The jit-compiled programs of the engine, one per shape bucket, with explicit shardings and a
compile counter.

Programs and their keys (B: batch bucket, Pb / Sb / Cb: prefix / suffix / continuation length
buckets; a row's own cache has S = Sb + N slots, derived):

    prefix(Pb)             tokens [1, Pb] -> prefix KV [L, 1, Pb, KVH, Dh]
    generate(B, Pb, Sb[, deltas])  SharedPrefix + SuffixBatch -> answers [B, N] and their lengths [B]:
                           prefill, then the greedy `while_loop`s in the same program (the cache
                           (B rows, S slots) lives and is updated in place inside them; the
                           batch shrinks to B/2, B/4 rows as rows finish, see decode.py); and
                           the prompts' KV (B rows, Sb slots) as prefill left it (kept for
                           scoring: a copy of the suffix slots, made before decode writes on);
                           with per-row weight deltas (RowDeltas: tables + each row's edit), one
                           program per delta structure (`delta_key`); or, with the engine's
                           rest packing, PackedRests too, scored off the prompts' KV after
                           prefill and before decode (log-probs [R, NB, Rb] returned last;
                           R, NB, K follow from (B, Sb, Rb): no key more); with the
                           engine's decode_carry, the rows carried in from the previous batch
                           of the program (C rows, S slots) and a `final` flag too: decode runs
                           B + C rows until <= C run (none where final) and returns the running
                           ones as the next carry (decode.decode_carrying; no key more)
    generate_stemmed(B, Pb, R, Tb, Sb)  the same for a StemmedBatch: R record stems of Tb slots
                           run once each, every row's rest (Sb) on its stem; prompts' KV of
                           Tb + Sb slots a row
    generate_packed(B, Pb, R, T, Sb)  the same for a PackedBatch: the suffixes prefilled as
                           segments of rows of T tokens, R rows a loop iteration, then gathered
                           into B rows of Sb prompt slots (decode and the kept KV as
                           `generate`); R and T follow from (B, Sb) (layout.pack_batch), so one
                           program per (B, Pb, Sb), as `generate`
    score(B, Pb, Sb, Cb)   SharedPrefix + ScoreBatch -> log-probs [B, Cb]
    score_kept(B, Pb, Sb, Rb, Bk)  SharedPrefix + a generate batch's kept KV (Bk rows, Sb
                           slots) + KeptScoreBatch of B rows -> log-probs [B, Rb] (B:
                           buckets.scoring_rows, ~2048 token slots a call, at most Bk)
    score_packed(Bk, Pb, Sb, R, NB, Rb, K)  SharedPrefix + a generate batch's kept KV +
                           PackedRests -> log-probs [R, NB, Rb]: rests packed into rows of Rb
                           tokens continuing at most K kept rows each, R rows a loop iteration;
                           R, NB and K follow from (Bk, Sb, Rb) (layout.rest_blocks,
                           rest_row_sources) and Rb is the engine's, so one program per kept
                           batch shape

Each program is called with keywords only; its inputs are the named structures of batch.py, whose
shardings are built from the same structures (a swapped argument fails on structure or shape).

The counter is incremented inside the traced body, so it counts real traces (= compilations),
including any unexpected retrace.
"""

from __future__ import annotations

import collections
import functools
import logging

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from bmike_jax.engine import batch as batch_lib
from bmike_jax.engine import layout
from bmike_jax.engine import sharding as sh
from bmike_jax.engine.batch import (
    KeptScoreBatch,
    PackedBatch,
    PackedRests,
    ScoreBatch,
    SharedPrefix,
    StemmedBatch,
    SuffixBatch,
)
from bmike_jax.engine.decode import concat_rows, decode_carrying, greedy_decode, per_row
from bmike_jax.engine.prefill import prefill, prefill_packed, prefill_stemmed, prefix_cache
from bmike_jax.engine.scoring import score_continuations, score_on_kept, score_packed_rests
from bmike_jax.engine.state import DecodeState, StopRule
from bmike_jax.model import KVCache, Llama
from bmike_jax.model.row_deltas import RowDeltas


def delta_key(tables) -> tuple:
  """What of the per-row delta tables a program is compiled for: projections, touched layers,
  shapes and dtypes (E edits, ranks)."""
  return tuple(
      (name, t.layers) + tuple((x.shape, str(x.dtype)) for x in (t.a, t.b) if x is not None)
      for name, t in sorted(tables.items())
  )


class Programs:
  """Builds (once per key) and caches the jitted programs for one model, params sharding and mesh."""

  def __init__(
      self,
      model: Llama,
      mesh: Mesh,
      params_shardings,
      max_new_tokens: int,
      decode_phases=lambda batch: (batch,),
      carry_rows=lambda batch: 0,
  ):
    self.model = model
    self.decode_phases = decode_phases  # batch -> the decode loop's shrinking batch sizes
    # batch -> rows its generate programs carry into the next batch of the same program (0: off)
    self.carry_rows = carry_rows
    self.mesh = mesh
    self.params_shardings = params_shardings
    self.max_new_tokens = max_new_tokens
    self.compiles: collections.Counter = collections.Counter()  # key -> traces
    self._jitted: dict = {}

  @property
  def compile_count(self) -> int:
    return sum(self.compiles.values())

  def _traced(self, key) -> None:
    self.compiles[key] += 1
    logging.info("engine: compiling %s (%d programs so far)", key, self.compile_count)

  def _get(self, key, build):
    if key not in self._jitted:
      self._jitted[key] = build()
    return self._jitted[key]

  # Shardings (built from the same structures the programs take) -------------------------------

  def _repl(self):
    return sh.replicated(self.mesh)

  def prefix_shardings(self, pb: int) -> SharedPrefix:
    kv = None
    if pb:
      kv = sh.prefix_shardings(self.mesh, self.model.config, not self.model.scan_layers)
    return SharedPrefix(kv=kv, length=self._repl())

  def cache_shardings(self, batch: int) -> KVCache:
    return sh.cache_shardings(self.mesh, self.model.config, batch, not self.model.scan_layers)

  def delta_shardings(self, tables, batch: int) -> RowDeltas:
    """Per-row deltas: the tables replicated (small beside the weights; FT-L's dense [E, F, D]
    the largest), each row's edit index with its row over the data axis."""
    return RowDeltas(
        tables=jax.tree_util.tree_map(lambda _: self._repl(), tables),
        index=sh.batch_sharding(self.mesh, 1, batch),
    )

  def stop_shardings(self):
    return StopRule(eos_ids=self._repl(), quote_mask=self._repl())

  def state_shardings(self, batch: int, per_row: bool = False) -> DecodeState:
    """per_row: write_index and step are [B] (carried rows, decode.decode_carrying), else []."""
    cache = self.cache_shardings(batch)
    r1 = sh.batch_sharding(self.mesh, 1, batch)
    r2, repl = sh.batch_sharding(self.mesh, 2, batch), self._repl()
    # out / num_out (tiny) are replicated so that every host can read the answers.
    return DecodeState(
        cache=cache,
        key_valid=r2,
        next_position=r1,
        write_index=r1 if per_row else repl,
        last_token=r1,
        out=repl,
        num_out=repl,
        done=r1,
        step=r1 if per_row else repl,
    )

  # Programs: each returns a keyword-only call ---------------------------------------------------

  def prefix(self, pb: int):
    """call(*, params, tokens [1, Pb], prefix_length []) -> KVCache (1 row, Pb slots)."""
    key = ("prefix", pb)

    def build():
      def fn(params, tokens, prefix_length):
        self._traced(key)
        return prefix_cache(self.model, params, tokens=tokens, prefix_length=prefix_length)

      jitted = jax.jit(
          fn,
          in_shardings=(self.params_shardings, self._repl(), self._repl()),
          out_shardings=self.prefix_shardings(pb).kv,
      )

      def call(*, params, tokens, prefix_length):
        return jitted(params, tokens, prefix_length)

      return call

    return self._get(key, build)

  def generate(self, batch: int, pb: int, sb: int, slots: int, tables=None, rests=None):
    """call(*, params, prefix: SharedPrefix, rows: SuffixBatch, stop[, deltas: RowDeltas]) ->
    (answers [B, N] int32, their lengths [B] int32, the prompts' KV (B rows, Sb slots), decode
    steps per phase [phases] int32); rows as `SuffixBatch.spec(batch=batch, suffix_bucket=sb)`.
    tables: the per-row weight delta tables the call's `deltas` will hold (model/row_deltas.py:
    one program per delta structure, `delta_key`), each row asked on its own edit; None: every
    row on `params`. rests: the PackedRests spec the call's `rests` will have (scoring inside
    the program, see `_generate`), or None."""
    key = ("generate", batch, pb, sb)
    return self._generate(
        key if tables is None else key + (delta_key(tables),),
        batch=batch,
        pb=pb,
        prompt_slots=sb,
        slots=slots,
        spec=SuffixBatch.spec(batch=batch, suffix_bucket=sb),
        first_pass=prefill,
        tables=tables,
        rests=rests,
    )

  def generate_stemmed(
      self, batch: int, pb: int, stem_rows: int, tb: int, sb: int, slots: int, rests=None
  ):
    """`generate` of rows split into stems and rests (prefill.prefill_stemmed): rows as
    `StemmedBatch.spec(...)`; the prompts' KV it returns holds Tb + Sb slots a row."""
    return self._generate(
        ("generate_stemmed", batch, pb, stem_rows, tb, sb),
        batch=batch,
        pb=pb,
        prompt_slots=tb + sb,
        slots=slots,
        spec=StemmedBatch.spec(batch=batch, suffix_bucket=sb, stem_rows=stem_rows, stem_bucket=tb),
        first_pass=prefill_stemmed,
        rests=rests,
    )

  def generate_packed(
      self, batch: int, pb: int, block_rows: int, t: int, sb: int, slots: int, rests=None
  ):
    """`generate` of rows whose suffixes are prefilled packed, `block_rows` rows of T tokens at a
    time (prefill.prefill_packed): rows as `PackedBatch.spec(...)` with
    `layout.packed_row_count(batch, block_rows)` rows of tokens in blocks; a block's rows and
    KV over the data axis; the prompts' KV it returns holds Sb slots a row, as `generate`'s."""
    return self._generate(
        ("generate_packed", batch, pb, block_rows, t, sb),
        batch=batch,
        pb=pb,
        prompt_slots=sb,
        slots=slots,
        spec=PackedBatch.spec(
            batch=batch,
            suffix_bucket=sb,
            packed_rows=block_rows,
            blocks=layout.packed_row_count(batch, block_rows) // block_rows,
            packed_length=t,
        ),
        first_pass=functools.partial(
            prefill_packed,
            block_rows=block_rows,
            place_block=lambda kv: jax.lax.with_sharding_constraint(
                kv, self.cache_shardings(block_rows)
            ),
            place_rows=lambda kv: jax.lax.with_sharding_constraint(kv, self.cache_shardings(batch)),
        ),
        rests=rests,
    )

  def _generate(
      self, key, *, batch, pb, prompt_slots, slots, spec, first_pass, tables=None, rests=None
  ):
    """The generate program of `key`. rests (a `PackedRests.spec`, or None): the call also takes
    `rests` and scores them off the prompts' KV right after prefill, before decode
    (`score_packed_rests`, as the score_packed program would off the kept copy), and returns
    their log-probs [R, NB, Rb] float32 last; the spec follows from (B, Sb) and the engine's Rb,
    so the key needs nothing more, and a batch with nothing to score passes an empty one (the
    loop then runs no block)."""
    if tables is not None and rests is not None:
      raise ValueError(f"program {key}: per-row deltas and scored rests together")

    carry_rows = self.carry_rows(batch) if tables is None else 0

    def build():
      phases = self.decode_phases(batch)

      def place(state):  # a state of any phase's batch size, rows over the data axis
        return jax.lax.with_sharding_constraint(
            state,
            self.state_shardings(state.last_token.shape[0], per_row=jnp.ndim(state.step) > 0),
        )

      def fn(params, prefix, rows, stop, *optional):
        self._traced(key)
        if carry_rows:
          (carry_in, final), optional = optional[:2], optional[2:]
        row_deltas = optional[0] if optional and tables is not None else None
        extra = {} if row_deltas is None else {"deltas": row_deltas}
        state = place(
            first_pass(
                self.model,
                params,
                prefix=prefix,
                batch=rows,
                stop=stop,
                slots=slots,
                max_new_tokens=self.max_new_tokens,
                **extra,
            )
        )
        kept = state.cache.slots(0, prompt_slots)  # the prompts' slots after the prefix
        scored = ()
        if rests is not None:  # [R, NB, Rb]: off the prompts' KV, before decode
          scored = (self._score_rests(params, prefix, kept, optional[-1]),)
        if carry_rows:  # the batch's rows and the carried ones; the running ones carried on
          state, carry, lanes, iterations = decode_carrying(
              self.model,
              params,
              prefix=prefix,
              state=place(concat_rows(per_row(state), carry_in)),
              carry_rows=carry_rows,
              final=final,
              stop=stop,
              constrain=place,
          )
          return (state.out, state.num_out, kept, iterations[None]) + scored + (carry, lanes)
        out, num_out, steps = greedy_decode(
            self.model,
            params,
            prefix=prefix,
            state=state,
            stop=stop,
            phases=phases,
            constrain=place,
            **extra,
        )
        return (out, num_out, kept, steps) + scored

      in_shardings = (
          self.params_shardings,
          self.prefix_shardings(pb),
          batch_lib.row_shardings(spec, self.mesh),
          self.stop_shardings(),
      )
      carried = ()
      if carry_rows:
        carried = (self.state_shardings(carry_rows, per_row=True),)
        in_shardings += carried + (self._repl(),)
      if tables is not None:
        in_shardings += (self.delta_shardings(tables, batch),)
      if rests is not None:
        in_shardings += (batch_lib.row_shardings(rests, self.mesh),)
      outs = (self._repl(), self._repl(), self.cache_shardings(batch), self._repl())
      if carry_rows:
        outs = (self._repl(), self._repl()) + outs[2:]  # out / num_out of B + C rows
      jitted = jax.jit(
          fn,
          in_shardings=in_shardings,
          out_shardings=outs
          + ((self._repl(),) if rests is not None else ())
          + (carried + (self._repl(),) if carry_rows else ()),
      )

      def call(
          *,
          params,
          prefix: SharedPrefix,
          rows,
          stop: StopRule,
          deltas=None,
          rests_in=None,
          carry=None,
          final=None,
      ):
        for name, given, wanted in (
            ("deltas", deltas, tables),
            ("rests", rests_in, rests),
            ("carry", carry, carry_rows or None),
        ):
          if (given is None) != (wanted is None):
            raise ValueError(
                f"program {key}: {name} {'missing' if given is None else 'unexpected'}"
            )
        optional = tuple(x for x in (deltas, rests_in) if x is not None)
        if carry_rows:
          optional = (carry, jnp.asarray(bool(final))) + optional
        return jitted(params, prefix, rows, stop, *optional)

      return call

    return self._get(key, build)

  def score(self, batch: int, pb: int, sb: int, cb: int, slots: int):
    """call(*, params, prefix: SharedPrefix, rows: ScoreBatch) -> log-probs [B, Cb] float32;
    rows as `ScoreBatch.spec(batch=batch, suffix_bucket=sb, continuation_bucket=cb)`."""
    key = ("score", batch, pb, sb, cb)

    def build():
      def fn(params, prefix, rows):
        self._traced(key)
        return score_continuations(self.model, params, prefix=prefix, batch=rows, slots=slots)

      spec = ScoreBatch.spec(batch=batch, suffix_bucket=sb, continuation_bucket=cb)
      jitted = jax.jit(
          fn,
          in_shardings=(
              self.params_shardings,
              self.prefix_shardings(pb),
              batch_lib.row_shardings(spec, self.mesh),
          ),
          out_shardings=self._repl(),
      )

      def call(*, params, prefix: SharedPrefix, rows: ScoreBatch):
        return jitted(params, prefix, rows)

      return call

    return self._get(key, build)

  def score_kept(self, batch: int, pb: int, sb: int, rb: int, slots: int, *, kept_batch: int):
    """call(*, params, prefix: SharedPrefix, kept: KVCache (Bk rows, Sb slots), rows:
    KeptScoreBatch) -> log-probs [B, Rb] float32; `kept` is a generate(Bk, Pb, Sb) batch's KV,
    rows as `KeptScoreBatch.spec(batch=batch, rest_bucket=rb)`."""
    key = ("score_kept", batch, pb, sb, rb, kept_batch)
    return self._on_kept(
        key,
        kept_batch=kept_batch,
        pb=pb,
        spec=KeptScoreBatch.spec(batch=batch, rest_bucket=rb),
        body=lambda params, prefix, kept, rows: score_on_kept(
            self.model, params, prefix=prefix, kept=kept, batch=rows, slots=slots
        ),
    )

  def score_packed(
      self, kept_batch: int, pb: int, sb: int, block_rows: int, blocks: int, rb: int, sources: int
  ):
    """call(*, params, prefix: SharedPrefix, kept: KVCache (Bk rows, Sb slots), rows: PackedRests)
    -> log-probs [R, NB, Rb] float32; `kept` is a generate(Bk, Pb, Sb) batch's KV, rows as
    `PackedRests.spec(block_rows=R, blocks=NB, row_length=Rb, sources=K)`."""
    key = ("score_packed", kept_batch, pb, sb, block_rows, blocks, rb, sources)
    return self._on_kept(
        key,
        kept_batch=kept_batch,
        pb=pb,
        spec=PackedRests.spec(block_rows=block_rows, blocks=blocks, row_length=rb, sources=sources),
        body=self._score_rests,
    )

  def _score_rests(self, params, prefix, kept, rows: PackedRests):
    """score_packed_rests of `rows` off `kept`, a block's rows over the data axis (traced)."""
    block_rows = rows.tokens.shape[0]
    return score_packed_rests(
        self.model,
        params,
        prefix=prefix,
        kept=kept,
        batch=rows,
        place_block=lambda kv: jax.lax.with_sharding_constraint(
            kv, self.cache_shardings(block_rows)
        ),
    )

  def _on_kept(self, key, *, kept_batch: int, pb: int, spec, body):
    """A scoring program off a generate(Bk, Pb, .) batch's kept KV: call(*, params, prefix:
    SharedPrefix, kept: KVCache (Bk rows), rows: `spec`'s structure) -> body(params, prefix,
    kept, rows), replicated."""

    def build():
      def fn(params, prefix, kept, rows):
        self._traced(key)
        return body(params, prefix, kept, rows)

      jitted = jax.jit(
          fn,
          in_shardings=(
              self.params_shardings,
              self.prefix_shardings(pb),
              self.cache_shardings(kept_batch),
              batch_lib.row_shardings(spec, self.mesh),
          ),
          out_shardings=self._repl(),
      )

      def call(*, params, prefix: SharedPrefix, kept: KVCache, rows):
        return jitted(params, prefix, kept, rows)

      return call

    return self._get(key, build)
