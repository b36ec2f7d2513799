"""python -m tools.sweep_plan: the engine's programs and token account for a whole run, from the
data and a tokenizer alone (no model).

It builds every prompt group of the run as the runner does (bmike_jax/workload.py), tokenizes
it, and replays the engine's host-side layout on it (engine/layout.py: the shared prefix,
batches, buckets, the scoring off the kept prompt KV), so the programs listed are the ones the
engine would compile and the token counts the ones it would run. Decode steps depend on the
model's answers: given as the bound (max_new_tokens per batch).

Tokenizing is additive here as in tools/prompt_lengths.py: the demonstrations end in "\\n\\n",
which Llama-3-style and SmolLM2's pre-tokenizers split off, so prompt ids = BOS + demonstration
ids + query ids, and a likelihood sequence = BOS + demonstration ids + ids(query + target); the
tool checks this on the first record of every unit against the whole prompt.

    python -m tools.sweep_plan --data_dir=../shared/bmike53 --tokenizer=DIR \\
        --length_buckets=128,256,512,1024,2048,4096 --batch_size=32
"""

from __future__ import annotations

import collections
import json
import sys

from absl import app, flags

from bmike_jax import data, languages, prompts, workload
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.engine import buckets as buckets_lib
from bmike_jax.engine import layout
from bmike_jax.runner import evaluate

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "BMIKE-53 data (default: tools/paths.py's).")
  flags.DEFINE_string("tokenizer", None, "Tokenizer (directory or .gguf; default: SmolLM2's).")
  flags.DEFINE_list("datasets", list(data.DATASETS), "Datasets.")
  flags.DEFINE_string("langs", "all", "Comma list or 'all'.")
  flags.DEFINE_list("setups", list(prompts.SETUPS), "Setups.")
  flags.DEFINE_integer("limit", None, "Records per file (default: all).")
  flags.DEFINE_integer("batch_size", 32, "Engine batch size.")
  flags.DEFINE_enum(
      "batch_shapes",
      "fixed",
      [s for s in buckets_lib.BATCH_SHAPES if s != "auto"],  # no device here to decide auto
      "The engine's batch shapes (bmike_jax/engine/buckets.py; fixed: what --batch_shapes=auto "
      "runs on GPU / TPU, buckets: on CPU).",
  )
  flags.DEFINE_list("length_buckets", None, "Engine length buckets (default: the engine's).")
  flags.DEFINE_integer("context", 8192, "Model context (caps the default buckets).")
  flags.DEFINE_integer("max_new_tokens", 15, "Answer tokens at most.")
  flags.DEFINE_string("out", "", "Write the account as JSON here too.")
  flags.DEFINE_boolean("stem_reuse", False, "The engine's stem_reuse (record stems run once).")
  flags.DEFINE_boolean("suffix_packing", False, "The engine's suffix_packing (packed suffix rows).")
  flags.DEFINE_integer("packed_length", 512, "The engine's packed_length (tokens a packed row).")
  flags.DEFINE_integer("packed_rows", 4, "The engine's packed_rows (packed rows a block).")
  flags.DEFINE_boolean("rest_packing", False, "The engine's rest_packing (packed scoring rests).")
  flags.DEFINE_integer("rest_row_length", 64, "The engine's rest_row_length (with rest_packing).")
  flags.DEFINE_list("prefix_buckets", None, "The engine's prefix_buckets (default: its).")


def plan_run(
    tok,
    *,
    data_dir,
    datasets,
    langs,
    setups,
    limit,
    batch_size,
    length_buckets,
    max_new_tokens,
    batch_shapes="fixed",
    likelihood=True,
    stem_reuse=False,
    min_stem=4,
    suffix_packing=False,
    packed_length=512,
    packed_rows=4,
    rest_row_length=0,
    prefix_buckets=None,
) -> dict:
  """{"programs": {key: uses}, "account": {...}} for the run (one engine, every group).
  rest_row_length: the engine's with rest_packing (0: off)."""
  length_buckets = tuple(sorted(length_buckets))
  prefix_buckets = buckets_lib.prefix_buckets(prefix_buckets, length_buckets)
  continuation_buckets = buckets_lib.continuation_buckets(length_buckets[-1])
  generation = layout.plan_settings(  # the engine's rule (one data device)
      batch_size=batch_size,
      batch_shapes=batch_shapes,
      length_buckets=length_buckets,
      stem_reuse=stem_reuse,
      min_stem=min_stem,
      suffix_packing=suffix_packing,
      packed_length=packed_length,
      packed_rows=packed_rows,
  )
  programs = collections.Counter()
  acc = collections.Counter()
  last_prefix = {}  # "ids": the prefix whose KV the engine holds
  for dataset in datasets:
    pool = data.load_pool(data_dir, dataset)
    for lang in langs:
      loaded = data.load_file(data_dir, dataset, lang, limit=limit)
      qts = data.QUERY_TYPES
      pairs = [(r, qt) for r in loaded.records for qt in qts]
      query_ids = dict(
          zip(
              [(r.index, qt) for r, qt in pairs],
              tok.encode_batch([prompts.query_text(r, qt) for r, qt in pairs], add_bos=False),
          )
      )
      jobs = {}  # (record index, qt) -> [(context tail, scored)] without BOS + demonstrations
      if likelihood and dataset in evaluate.LIKELIHOOD_DATASETS:
        texts, keys = [], []
        for r, qt in pairs:
          if qt not in evaluate.LIKELIHOOD_QUERY_TYPES:
            continue
          for field in ("alt",) + evaluate.LIKELIHOOD_ALTERNATIVES:
            target = getattr(r.target, field)
            if target is not None:
              texts += [prompts.query_text(r, qt) + target, target]
              keys.append((r.index, qt, target))
        enc = tok.encode_batch(texts, add_bos=False)
        for (index, qt, text), joint, target in zip(keys, enc[::2], enc[1::2]):
          jobs.setdefault((index, qt), []).append((joint, len(target), text))
      for setup in setups:
        demo = {
            qt: tok.encode(
                prompts.render_demonstrations(pool, prompts.demonstration_indices(setup, qt), lang),
                add_bos=True,
            )
            for qt in qts
        }
        first = loaded.records[0]
        additive = all(  # else this unit's prompts are tokenized whole (slower)
            tok.encode(prompts.build_prompt(pool, setup, lang, first, qt))
            == demo[qt] + query_ids[(first.index, qt)]
            for qt in qts
        )
        acc["units_tokenized_whole"] += not additive
        for group in workload.unit_groups(loaded=loaded, pool=pool, setup=setup, query_types=qts):
          if additive:
            ids = [
                demo[q.query_type] + query_ids[(q.record.index, q.query_type)]
                for q in group.queries
            ]
            group_jobs = [
                [
                    (demo[q.query_type] + joint, n)
                    for joint, n, _ in jobs.get((q.record.index, q.query_type), ())
                ]
                for q in group.queries
            ]
          else:
            ids = tok.encode_batch(group.prompts, add_bos=True)
            group_jobs = [
                [
                    (tok.encode(q.prompt + target), n)
                    for _, n, target in jobs.get((q.record.index, q.query_type), ())
                ]
                for q in group.queries
            ]
          _plan_group(
              ids,
              group_jobs,
              programs=programs,
              acc=acc,
              last_prefix=last_prefix,
              generation=generation,
              length_buckets=length_buckets,
              prefix_buckets=prefix_buckets,
              continuation_buckets=continuation_buckets,
              max_new_tokens=max_new_tokens,
              rest_row_length=rest_row_length,
              fresh_rows=buckets_lib.fresh_scoring_rows(batch_size, batch_shapes),
          )
  return {
      "programs": {" ".join(map(str, k)): v for k, v in sorted(programs.items())},
      "program_count": len(programs),
      "account": dict(acc),
  }


def _prefix_of(seqs, prefix_buckets, *, programs, acc, last_prefix) -> layout.GroupLayout:
  """A call's shared prefix (Engine._prefix's rule), counting its prefix program where it runs
  one: the engine reuses the last prefix's KV, and an empty prefix region (P = 0 < Pb) runs none."""
  group = layout.plan_group(seqs, reuse=True, length_buckets=prefix_buckets)
  if group.prefix_length and last_prefix.get("ids") != group.prefix:
    programs[("prefix", group.prefix_bucket)] += 1
    acc["prefix_tokens"] += group.prefix_length
    acc["prefill_padded_tokens"] += group.prefix_bucket
    last_prefix["ids"] = group.prefix
  return group


def _plan_group(
    ids,
    jobs,
    *,
    programs,
    acc,
    last_prefix,
    generation,
    length_buckets,
    prefix_buckets,
    continuation_buckets,
    max_new_tokens,
    rest_row_length,
    fresh_rows,
):
  """The engine's generate + continuation_logprobs of one group, replayed on the host."""
  group = _prefix_of(ids, prefix_buckets, programs=programs, acc=acc, last_prefix=last_prefix)
  p, pb = group.prefix_length, group.prefix_bucket
  suffixes = [x[p:] for x in ids]
  plans = layout.plan_generate(suffixes, generation, prefix_bucket=pb)
  places = [None] * len(ids)
  for j, plan in enumerate(plans):
    programs[plan.program_key(pb)] += 1
    acc["prefill_padded_tokens"] += plan.padded_slots()
    acc["decode_steps_at_most"] += max_new_tokens - 1
    # The cost of coarse prefix buckets: (query, key) pairs over masked prefix slots, each query
    # slot of the prefill and each row of a decode step (at most) attending Pb - P of them.
    acc["masked_prefix_pairs_prefill"] += plan.padded_slots() * (pb - p)
    acc["masked_prefix_pairs_decode_at_most"] += (max_new_tokens - 1) * plan.batch * (pb - p)
    for r, i in enumerate(plan.rows):
      places[i] = (j, r)
  acc["prompts"] += len(ids)
  acc["prompt_tokens"] += sum(len(x) for x in ids)
  acc["prompt_tree_tokens"] += layout.prefix_tree_tokens(ids)
  saved = sum(plan.stem_tokens_saved() for plan in plans)
  acc["suffix_tokens"] += sum(len(s) for s in suffixes) - saved
  acc["stem_tokens"] += sum(plan.stem_tokens() for plan in plans)
  contexts, conts = [], []
  for seqs in jobs:
    for joint, n in seqs:
      n = n or len(joint) - 1
      contexts.append(joint[:-n])
      conts.append(joint[-n:])
  if not contexts:
    return
  kept = layout.KeptPrompts.build(ids, places)
  shapes = dict(
      kept=kept,
      prefix_length=p,
      batches=[plan.batch for plan in plans],
      rest_buckets=continuation_buckets,
      rest_row_length=rest_row_length,
      slots=[plan.prompt_slots for plan in plans],
  )
  acc["scored_sequences"] += len(contexts)
  acc["scored_tokens"] += sum(len(x) + len(c) for x, c in zip(contexts, conts))
  if rest_row_length:  # the runner announces its sequences: packed rests scored in generate
    done = set()
    for rp in layout.in_program_rests(contexts, conts, **shapes).values():
      acc["scored_on_kept"] += len(rp.rests)
      acc["scored_run_tokens"] += sum(len(x.tokens) for x in rp.rests)
      acc["scoring_padded_tokens"] += rp.padded_slots()
      done |= {(tuple(contexts[x.index]), tuple(conts[x.index])) for x in rp.rests}
    left = [i for i, pair in enumerate(zip(contexts, conts)) if tuple(map(tuple, pair)) not in done]
    contexts, conts = [contexts[i] for i in left], [conts[i] for i in left]
  packed, kplans, fresh = layout.plan_scoring(contexts, conts, **shapes)
  for rp in packed:
    sb = plans[rp.source_batch].prompt_slots
    key = ("score_packed", rp.kept_batch, pb, sb, rp.block_rows, rp.blocks, rp.row_length)
    key += (rp.sources_per_row,)
    programs[key] += 1
    acc["scored_on_kept"] += len(rp.rests)
    acc["scored_run_tokens"] += sum(len(x.tokens) for x in rp.rests)
    acc["scoring_padded_tokens"] += rp.padded_slots()
  for kp in kplans:
    sb = plans[kp.source_batch].prompt_slots
    programs[("score_kept", kp.batch, pb, sb, kp.rest_bucket, kp.kept_batch)] += 1
    acc["scored_on_kept"] += len(kp.indices)
    acc["scored_run_tokens"] += sum(len(t) for t in kp.tokens)
    acc["scoring_padded_tokens"] += kp.batch * kp.rest_bucket
  if fresh:  # the runner scores these (the empty targets) in a call of their own
    fc = [contexts[i] for i in fresh]
    fgroup = _prefix_of(fc, prefix_buckets, programs=programs, acc=acc, last_prefix=last_prefix)
    fp, fpb = fgroup.prefix_length, fgroup.prefix_bucket
    for plan in layout.plan_batches(
        [len(c) - fp for c in fc],
        batch_size=fresh_rows[-1],
        batch_buckets=fresh_rows,
        length_buckets=length_buckets,
        extra_lengths=[len(conts[i]) for i in fresh],
        extra_buckets=buckets_lib.fresh_continuation_buckets(prefix_buckets),
    ):
      programs[("score", plan.batch, fpb, plan.suffix_bucket, plan.extra_bucket)] += 1
      acc["scoring_padded_tokens"] += plan.batch * (plan.suffix_bucket + plan.extra_bucket - 1)
    acc["scored_run_tokens"] += sum(len(c) - fp for c in fc)
    acc["scored_run_tokens"] += sum(len(conts[i]) - 1 for i in fresh)


def main(argv):
  del argv
  from bmike_jax import checkpoints
  from tools import paths

  source = FLAGS.tokenizer or checkpoints.default_gguf_path()
  tok = tokenizer_lib.load_tokenizer(source)
  langs = tuple(languages.LANGUAGES) if FLAGS.langs == "all" else tuple(FLAGS.langs.split(","))
  buckets = (
      [int(x) for x in FLAGS.length_buckets]
      if FLAGS.length_buckets
      else buckets_lib.default_length_buckets(FLAGS.context)
  )
  out = plan_run(
      tok,
      data_dir=FLAGS.data_dir or paths.default_data_dir(),
      datasets=FLAGS.datasets,
      langs=langs,
      setups=FLAGS.setups,
      limit=FLAGS.limit,
      batch_size=FLAGS.batch_size,
      length_buckets=buckets,
      max_new_tokens=FLAGS.max_new_tokens,
      batch_shapes=FLAGS.batch_shapes,
      stem_reuse=FLAGS.stem_reuse,
      suffix_packing=FLAGS.suffix_packing,
      packed_length=FLAGS.packed_length,
      packed_rows=FLAGS.packed_rows,
      rest_row_length=FLAGS.rest_row_length if FLAGS.rest_packing else 0,
      prefix_buckets=[int(x) for x in FLAGS.prefix_buckets] if FLAGS.prefix_buckets else None,
  )
  text = json.dumps(out, indent=1)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      f.write(text)
  print(text)
  print(f"{out['program_count']} programs", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main)
