"""python -m tools.bench_stems: the engine with and without one of its answer-neutral sharing
options (`--option`: record stems, `stem_reuse`; packed suffix rows, `suffix_packing`; record
stems as segments of packed rows, `packed_stems` (packing on both sides) or
`packed_stems_vs_padded` (against neither); decode rows carried between batches, `decode_carry`
(against a loop waiting for its longest row) or `decode_carry_vs_shrink` (against the shrinking
loop)), side by side in one process, on the runner's own prompt groups: time of the warm pass and
the engine's token account (prompt tokens computed, padded prefill slots, stem tokens, decode
loop steps and rows x steps).
`--option=rest_packing` (packed scoring rests) runs the runner's own units instead
(`evaluate.evaluate_unit`: generation, then the likelihood comparison; CounterFact or
WikiFactDiff) and times the scoring calls (`continuation_logprobs`) apart. With rest packing on,
the runner announces its sequences to `generate`, whose programs score the packed rests before
decode: the scoring calls then hold only what is left (longer rests, fresh sequences), and the
whole pass is the fair comparison.

Model: SmolLM2-135M (the embedded GGUF, float32) unless --checkpoint. Each engine runs the
groups once cold (compiles), then --passes timed warm passes; the configurations alternate
(off, on, off, on, ...) so that a drift of the machine's speed falls on both. Answers of the two
configurations are compared (they must be identical in float32).

    python -m tools.bench_stems --records=16 --langs=de,zh --setups=zero_shot,few_shot_mixed
    python -m tools.bench_stems --option=suffix_packing --length_buckets=64,128,256,512,1024
    python -m tools.bench_stems --option=packed_stems --length_buckets=64,128,256,512,1024
    python -m tools.bench_stems --option=rest_packing --dataset=counterfact --rest_row_length=64
    python -m tools.bench_stems --option=decode_carry --batch_size=64 --batch_shapes=fixed
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from bmike_jax import checkpoints, data, workload
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.engine import Engine

FLAGS = flags.FLAGS
_PACKED_STEMS = {"suffix_packing": True, "stem_reuse": True}  # stems as packed segments
# --option -> the Engine arguments of its (off, on) configurations
OPTIONS = {
    "stem_reuse": ({}, {"stem_reuse": True}),
    "suffix_packing": ({}, {"suffix_packing": True}),
    "packed_stems": ({"suffix_packing": True}, _PACKED_STEMS),
    "packed_stems_vs_padded": ({}, _PACKED_STEMS),
    # decode rows carried between batches (share: --decode_carry) against a loop that waits for
    # its longest row (configs/3b, 8b.flags: no shrinking), or against the shrinking loop (CPU's
    # default, decode_halvings 2)
    "decode_carry": ({"decode_halvings": 0}, {"decode_carry": None}),
    "decode_carry_vs_shrink": ({}, {"decode_carry": None}),
}
ACCOUNT = (
    "prompt_tokens",
    "prefill_tokens",
    "stem_tokens",
    "prefill_padded_tokens",
    "decode_steps",
    "decode_row_steps",
    "generated_tokens",
)


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "BMIKE-53 data (default: tools/paths.py's).")
  flags.DEFINE_string("checkpoint", None, "Model (default: the embedded SmolLM2 GGUF).")
  flags.DEFINE_string("dataset", "zsre", "Dataset.")
  flags.DEFINE_integer("records", 16, "Records per language.")
  flags.DEFINE_list("langs", ["de", "zh"], "Languages.")
  flags.DEFINE_list("setups", ["zero_shot", "few_shot_mixed"], "Setups.")
  flags.DEFINE_integer("batch_size", 16, "Engine batch size.")
  flags.DEFINE_integer("passes", 2, "Timed warm passes per configuration.")
  flags.DEFINE_string("out", "", "Write the numbers as JSON here too.")
  flags.DEFINE_enum(
      "option",
      "stem_reuse",
      [*OPTIONS, "rest_packing"],
      "The Engine option compared.",
  )
  flags.DEFINE_integer("rest_row_length", 64, "The engine's rest_row_length (with rest_packing).")
  flags.DEFINE_list("length_buckets", None, "Engine length buckets (default: the engine's).")
  flags.DEFINE_integer("packed_length", 512, "The engine's packed_length (with suffix_packing).")
  flags.DEFINE_integer("packed_rows", 4, "The engine's packed_rows (with suffix_packing).")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype (bf16 on a GPU).")
  flags.DEFINE_enum(
      "batch_shapes", "auto", ["auto", "buckets", "fixed"], "The engine's batch_shapes."
  )
  flags.DEFINE_float("decode_carry", 0.25, "The share carried (--option=decode_carry*).")


def measure(
    *,
    data_dir,
    checkpoint,
    dataset,
    records,
    langs,
    setups,
    batch_size,
    passes,
    option="stem_reuse",
    length_buckets=None,
    packed_length=512,
    packed_rows=4,
    dtype="float32",
    batch_shapes="auto",
    decode_carry=0.25,
) -> dict:
  config, params = checkpoints.load_model(checkpoint, dtype)
  tok = tokenizer_lib.load_tokenizer(checkpoint)
  pool = data.load_pool(data_dir, dataset)
  groups = []  # (key, prompt ids): the runner's engine calls
  for lang in langs:
    loaded = data.load_file(data_dir, dataset, lang, limit=records)
    for setup in setups:
      for g in workload.unit_groups(
          loaded=loaded, pool=pool, setup=setup, query_types=data.QUERY_TYPES
      ):
        groups.append((g.key, tok.encode_batch(g.prompts, add_bos=True)))
  engines = {
      on: Engine(
          config,
          params,
          tok,
          batch_size=batch_size,
          length_buckets=length_buckets,
          packed_length=packed_length,
          packed_rows=packed_rows,
          dtype=dtype,
          batch_shapes=batch_shapes,
          **{k: decode_carry if k == "decode_carry" else v for k, v in OPTIONS[option][on].items()},
      )
      for on in (False, True)
  }
  out = {
      "option": option,
      "length_buckets": list(engines[False].length_buckets),
      "packed_length": packed_length,
      "packed_rows": packed_rows,
      "dtype": dtype,
      "batch_size": batch_size,
      "batch_shapes": engines[False].batch_shapes,
      "decode_carry": decode_carry if "decode_carry" in option else 0.0,
      "groups": [k for k, _ in groups],
      "runs": {},
  }
  for on, engine in engines.items():  # cold pass: compiles every shape
    answers = [[r.ids for r in engine.generate(ids)] for _, ids in groups]
    out["runs"][str(on)] = {
        "programs": engine.compile_count,
        "answers": answers,
        "seconds": [],
        "group_seconds": [],
    }
  for _ in range(passes):
    for on, engine in engines.items():
      engine.reset_stats()
      run, per = out["runs"][str(on)], []
      t0 = time.perf_counter()
      for _, ids in groups:
        t = time.perf_counter()
        engine.generate(ids)
        per.append(round(time.perf_counter() - t, 3))
      run["seconds"].append(round(time.perf_counter() - t0, 3))
      run["group_seconds"].append(per)
      run["account"] = {k: getattr(engine.stats, k) for k in ACCOUNT}
      run["warm_compiles"] = engine.compile_count - run["programs"]
  off, on = out["runs"]["False"], out["runs"]["True"]
  out["identical_answers"] = off["answers"] == on["answers"]
  lengths = [len(ids) for group in off["answers"] for ids in group]  # tokens kept an answer
  out["answers"] = len(lengths)
  out["mean_answer_tokens"] = round(sum(lengths) / max(len(lengths), 1), 3)
  out["answers_at_max_new_tokens"] = sum(n >= engines[False].max_new_tokens for n in lengths)
  for run in (off, on):
    del run["answers"]
  return out


def table(out: dict) -> str:
  lines = [
      f"| {out.get('option', 'stem_reuse')} | warm seconds (each pass) | programs | "
      + " | ".join(ACCOUNT)
      + " |",
      "| --- | --- | --- | " + " | ".join("---" for _ in ACCOUNT) + " |",
  ]
  for name, run in out["runs"].items():
    lines.append(
        f"| {name} | {', '.join(f'{s:.2f}' for s in run['seconds'])} | {run['programs']} | "
        + " | ".join(f"{run['account'][k]:,}" for k in ACCOUNT)
        + " |"
    )
  lines.append(f"\nanswers identical: {out['identical_answers']}")
  if "mean_answer_tokens" in out:
    lines.append(
        f"answers: {out['answers']}, {out['mean_answer_tokens']} tokens kept on average, "
        f"{out['answers_at_max_new_tokens']} at max_new_tokens"
    )
  return "\n".join(lines)


SCORING_ACCOUNT = (
    "scored_sequences",
    "scored_on_kept",
    "scored_run_tokens",
    "scoring_padded_tokens",
)
INV_PPL = ("inv_ppl_alt", "inv_ppl_loc_ans", "inv_ppl_old")


def measure_scoring(
    *,
    data_dir,
    checkpoint,
    dataset,
    records,
    langs,
    setups,
    batch_size,
    passes,
    length_buckets=None,
    rest_row_length=64,
    dtype="float32",
) -> dict:
  """`measure` for rest_packing: the runner's units (generation, then the likelihoods) with the
  engine's rest packing off and on; the scoring calls (`continuation_logprobs`) timed apart."""
  from bmike_jax.runner import evaluate

  if dataset not in evaluate.LIKELIHOOD_DATASETS:
    raise ValueError(f"--option=rest_packing scores {evaluate.LIKELIHOOD_DATASETS}, not {dataset}")
  config, params = checkpoints.load_model(checkpoint, dtype)
  tok = tokenizer_lib.load_tokenizer(checkpoint)
  pool = data.load_pool(data_dir, dataset)
  units = [
      (lang, setup, data.load_file(data_dir, dataset, lang, limit=records))
      for lang in langs
      for setup in setups
  ]
  engines, scoring = {}, {}
  for on in (False, True):
    engine = Engine(
        config,
        params,
        tok,
        batch_size=batch_size,
        length_buckets=length_buckets,
        dtype=dtype,
        rest_packing=on,
        rest_row_length=rest_row_length,
    )
    score, spent = engine.continuation_logprobs, [0.0]

    def timed(*args, _score=score, _spent=spent, **kw):
      t = time.perf_counter()
      out = _score(*args, **kw)
      _spent[0] += time.perf_counter() - t
      return out

    engine.continuation_logprobs = timed
    engines[on], scoring[on] = engine, spent

  def run(engine):
    rows = []
    for _, setup, loaded in units:
      rows += evaluate.evaluate_unit(
          engine, tok, loaded, pool, setup, data.QUERY_TYPES, likelihood=True
      )
    return rows

  out = {"option": "rest_packing", "rest_row_length": rest_row_length, "dtype": dtype, "runs": {}}
  rows = {}
  for on, engine in engines.items():  # cold pass: compiles every shape
    rows[on] = run(engine)
    out["runs"][str(on)] = {"programs": engine.compile_count, "seconds": [], "scoring_seconds": []}
  for _ in range(passes):
    for on, engine in engines.items():
      engine.reset_stats()
      scoring[on][0] = 0.0
      t0 = time.perf_counter()
      run(engine)
      entry = out["runs"][str(on)]
      entry["seconds"].append(round(time.perf_counter() - t0, 3))
      entry["scoring_seconds"].append(round(scoring[on][0], 3))
      entry["account"] = {k: getattr(engine.stats, k) for k in SCORING_ACCOUNT}
      entry["warm_compiles"] = engine.compile_count - entry["programs"]
  strip = lambda r: {k: v for k, v in r.items() if k not in INV_PPL}
  out["identical_answers"] = [strip(r) for r in rows[False]] == [strip(r) for r in rows[True]]
  out["max_relative_inv_ppl_difference"] = max(
      (
          abs(a[k] - b[k]) / abs(a[k])
          for a, b in zip(rows[False], rows[True])
          for k in INV_PPL
          if a.get(k)
      ),
      default=0.0,
  )
  return out


def scoring_table(out: dict) -> str:
  lines = [
      "| rest_packing | warm seconds (each pass) | of which scoring | programs | "
      + " | ".join(SCORING_ACCOUNT)
      + " |",
      "| --- | --- | --- | --- | " + " | ".join("---" for _ in SCORING_ACCOUNT) + " |",
  ]
  for name, run in out["runs"].items():
    lines.append(
        f"| {name} | {', '.join(f'{s:.2f}' for s in run['seconds'])} | "
        f"{', '.join(f'{s:.2f}' for s in run['scoring_seconds'])} | {run['programs']} | "
        + " | ".join(f"{run['account'][k]:,}" for k in SCORING_ACCOUNT)
        + " |"
    )
  lines.append(
      f"\nanswers identical: {out['identical_answers']}; 1/PPL at most "
      f"{out['max_relative_inv_ppl_difference']:.1e} apart (relative)"
  )
  return "\n".join(lines)


def main(argv):
  del argv
  from tools import paths

  common = dict(
      data_dir=FLAGS.data_dir or paths.default_data_dir(),
      checkpoint=FLAGS.checkpoint or checkpoints.default_gguf_path(),
      dataset=FLAGS.dataset,
      records=FLAGS.records,
      langs=FLAGS.langs,
      setups=FLAGS.setups,
      batch_size=FLAGS.batch_size,
      passes=FLAGS.passes,
      length_buckets=[int(x) for x in FLAGS.length_buckets] if FLAGS.length_buckets else None,
      dtype=FLAGS.dtype,
  )
  if FLAGS.option == "rest_packing":
    out = measure_scoring(**common, rest_row_length=FLAGS.rest_row_length)
  else:
    out = measure(
        **common,
        option=FLAGS.option,
        packed_length=FLAGS.packed_length,
        packed_rows=FLAGS.packed_rows,
        batch_shapes=FLAGS.batch_shapes,
        decode_carry=FLAGS.decode_carry,
    )
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=1)
  print(scoring_table(out) if FLAGS.option == "rest_packing" else table(out))


if __name__ == "__main__":
  define_flags()
  app.run(main)
