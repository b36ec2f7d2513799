"""Mean BMIKE-53 prompt length in a tokenizer's tokens, per setup and script group, over every
record of every language of the full data (for the GPU projections in BENCHMARKS.md).

    python -m tools.prompt_lengths --data_dir=../shared/bmike53 --tokenizer=DIR [--out=FILE.json]

A prompt is demonstrations + query, and the two tokenize apart: the demonstrations end in "\\n\\n",
which Llama 3's pre-tokenizer splits off, and the query starts a new pre-token at `New Fact`.
So len(prompt) = len(demonstrations) + len(query) - (BOS counted once); the script checks this
identity on a sample of whole prompts before it relies on it, and counts BOS once.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from collections import defaultdict

from absl import app, flags

from bmike_jax import data, languages, prompts
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.analysis.scripts import script_group

FLAGS = flags.FLAGS


def define_flags() -> None:
  """This tool's flags (defined only when it runs as a script, so tests can import it beside
  other tools)."""
  flags.DEFINE_string("data_dir", None, "Full BMIKE-53 data (zsRE/, CounterFact/, ...).")
  flags.DEFINE_string("tokenizer", None, "Tokenizer directory (tokenizer.json / tokenizer.model).")
  flags.DEFINE_string("langs", "all", "Comma list or 'all'.")
  flags.DEFINE_integer("check", 2000, "Whole prompts tokenized to check the additivity.")
  flags.DEFINE_string("out", "", "Write the table as JSON here too.")


def measure(data_dir: str, tok, langs, check: int = 2000, seed: int = 0) -> dict:
  """{"by_setup_script": {setup: {group: mean}}, "by_setup": {setup: mean}, "n": ...}."""
  totals = defaultdict(list)  # (setup, group) -> prompt lengths
  samples = []
  for dataset in data.DATASETS:
    pool = data.load_pool(data_dir, dataset)
    for lang in langs:
      loaded = data.load_file(data_dir, dataset, lang)
      group = script_group(languages.LANGUAGES[lang])
      queries = [(r, qt) for r in loaded.records for qt in data.QUERY_TYPES]
      query_lens = [
          len(ids)
          for ids in tok.encode_batch(
              [prompts.query_text(r, qt) for r, qt in queries], add_bos=True
          )
      ]
      for setup in prompts.SETUPS:
        demo_len = {
            qt: len(
                tok.encode(
                    prompts.render_demonstrations(
                        pool, prompts.demonstration_indices(setup, qt), lang
                    ),
                    add_bos=False,
                )
            )
            for qt in data.QUERY_TYPES
        }
        for (record, qt), n in zip(queries, query_lens):
          totals[(setup, group)].append(n + demo_len[qt])
          samples.append((dataset, setup, lang, record, qt, n + demo_len[qt], pool))
  rng = random.Random(seed)
  for dataset, setup, lang, record, qt, want, pool in rng.sample(samples, min(check, len(samples))):
    got = len(tok.encode(prompts.build_prompt(pool, setup, lang, record, qt)))
    if got != want:
      raise SystemExit(
          f"additivity fails for {dataset}/{setup}/{lang}/{qt} case "
          f"{record.case_id}: {got} != {want}"
      )
  by_setup_script = defaultdict(dict)
  for (setup, group), lens in sorted(totals.items()):
    by_setup_script[setup][group] = round(statistics.fmean(lens), 1)
  by_setup = {
      s: round(
          statistics.fmean([n for (s2, _), lens in totals.items() if s2 == s for n in lens]), 1
      )
      for s in prompts.SETUPS
  }
  return {
      "by_setup_script": dict(by_setup_script),
      "by_setup": by_setup,
      "n_prompts": len(samples),
      "checked_whole_prompts": min(check, len(samples)),
      "groups": {
          g: sorted(l for l in langs if script_group(languages.LANGUAGES[l]) == g)
          for g in sorted({script_group(languages.LANGUAGES[l]) for l in langs})
      },
  }


def main(argv):
  del argv
  tok = tokenizer_lib.load_tokenizer(FLAGS.tokenizer)
  langs = tuple(languages.LANGUAGES) if FLAGS.langs == "all" else tuple(FLAGS.langs.split(","))
  table = measure(FLAGS.data_dir, tok, langs, FLAGS.check)
  if FLAGS.out:
    with open(FLAGS.out, "w", encoding="utf-8") as f:
      json.dump(table, f, indent=1, ensure_ascii=False)
  groups = sorted(next(iter(table["by_setup_script"].values())))
  print("| setup | all | " + " | ".join(groups) + " |")
  print("|---|---|" + "---|" * len(groups))
  for setup, row in table["by_setup_script"].items():
    print(
        f"| {setup} | {table['by_setup'][setup]} | "
        + " | ".join(str(row[g]) for g in groups)
        + " |"
    )
  print(
      f"{table['n_prompts']} prompts; additivity checked on {table['checked_whole_prompts']} "
      "whole prompts",
      file=sys.stderr,
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
