"""python -m tools.bench_likelihood: the likelihood comparison's cost, scored off the generated
prompts' kept KV against scored afresh, side by side in one process.

The runner's own calls (runner/evaluate.evaluate_unit: `generate`, then the likelihood jobs) on
CounterFact reliability + generality prompts, SmolLM2-135M (the embedded GGUF), float32. Each
engine runs the whole workload twice (the first pass compiles); the second pass is timed:
generate and scoring apart, with the tokens each computed. Prints one markdown table.

python -m tools.bench_likelihood --records=16 --langs=de,zh --setups=zero_shot,few_shot_mixed
"""

from __future__ import annotations

import time

from absl import app
from absl import flags

from bmike_jax import checkpoints, data
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax import workload
from bmike_jax.engine import Engine
from bmike_jax.runner import evaluate
from tools import paths

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "BMIKE-53 data (default: tools/paths.py's).")
flags.DEFINE_string("dataset", "counterfact", "counterfact or wikifactdiff.")
flags.DEFINE_integer("records", 16, "Records per language.")
flags.DEFINE_list("langs", ["de", "zh"], "Languages.")
flags.DEFINE_list("setups", ["zero_shot", "few_shot_mixed"], "Setups.")
flags.DEFINE_integer("batch_size", 16, "Engine batch size.")

QUERY_TYPES = evaluate.LIKELIHOOD_QUERY_TYPES


def _groups(tokenizer):
  data_dir = FLAGS.data_dir or paths.default_data_dir()
  pool = data.load_pool(data_dir, FLAGS.dataset)
  out = []
  for lang in FLAGS.langs:
    loaded = data.load_file(data_dir, FLAGS.dataset, lang, limit=FLAGS.records)
    for setup in FLAGS.setups:
      for group in workload.unit_groups(
          loaded=loaded, pool=pool, setup=setup, query_types=QUERY_TYPES
      ):
        out.append(
            (
                group,
                [
                    evaluate._Query(q.record, q.query_type, q.prompt, tokenizer.encode(q.prompt))
                    for q in group.queries
                ],
            )
        )
  return out


def _pass(engine, tokenizer, groups):
  """(generate seconds, scoring seconds, likelihood rows) of one pass over the groups."""
  gen = score = 0.0
  rows = []
  for group, queries in groups:
    t0 = time.perf_counter()
    engine.generate([q.prompt_ids for q in queries], prompt_names=group.names)
    t1 = time.perf_counter()
    rows.append(evaluate._likelihoods(engine, evaluate._likelihood_jobs(tokenizer, queries)))
    gen, score = gen + t1 - t0, score + time.perf_counter() - t1
  return gen, score, rows


def main(argv):
  del argv
  source = checkpoints.default_gguf_path()
  config, params = checkpoints.load_model(source)
  tokenizer = tokenizer_lib.load_tokenizer(source)
  groups = _groups(tokenizer)
  prompts = sum(len(q) for _, q in groups)
  print(
      f"{FLAGS.dataset} {','.join(FLAGS.langs)} x {','.join(FLAGS.setups)}, {FLAGS.records} "
      f"records, reliability + generality: {prompts} prompts; batch {FLAGS.batch_size}"
  )
  print("| scoring | generate (s) | scoring (s) | sequences | on kept KV | tokens run | programs |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  results = {}
  for name, keep in (("afresh", False), ("off the kept KV", True)):
    engine = Engine(config, params, tokenizer, batch_size=FLAGS.batch_size, keep_prompt_kv=keep)
    _pass(engine, tokenizer, groups)  # compiles
    engine.reset_stats()
    gen, score, rows = _pass(engine, tokenizer, groups)
    s = engine.stats
    results[name] = rows
    print(
        f"| {name} | {gen:.2f} | {score:.2f} | {s.scored_sequences} | {s.scored_on_kept} | "
        f"{s.scored_run_tokens} | {engine.compile_count} |"
    )
  worst = 0.0
  for a, b in zip(results["afresh"], results["off the kept KV"]):
    for i in a:
      for key, v in a[i].items():
        if v is not None:
          worst = max(worst, abs(b[i][key] - v) / abs(v))
  print(f"\n1/PPL, kept against afresh: max relative difference {worst:.2e}")


if __name__ == "__main__":
  app.run(main)
