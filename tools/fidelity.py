"""Engine vs the HF torch reference on real BMIKE-53 prompts: extracted-answer agreement.

    python -m tools.fidelity --langs=de,ru,zh,th --setups=few_shot_mixed,zero_shot --limit=5

Builds the prompts the runner builds, grouped as the runner groups them (bmike_jax/workload.py),
generates with the engine (batched, shared prefix reused) and with HF `generate` one prompt at a
time (the reference's way: float32, the HF tokenizer's encoding of the prompt text), and prints
the agreement rate and every differing case side by side. Needs torch and transformers (the `reference` extra).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

from bmike_jax import data as data_lib
from bmike_jax import prompts as prompts_lib
from bmike_jax import workload


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  dataset: str
  setup: str
  lang: str
  query_type: str
  prompt: str
  prompt_ids: tuple[int, ...]  # our tokenizer
  reference_ids: tuple[int, ...]  # the HF tokenizer (the reference's input)
  engine_answer: str = ""
  reference_answer: str = ""
  engine_new_ids: tuple[int, ...] = ()
  reference_new_ids: tuple[int, ...] = ()

  @property
  def agrees(self) -> bool:
    return self.engine_answer == self.reference_answer


def build_groups(
    data_dir,
    datasets: Sequence[str],
    setups: Sequence[str],
    langs: Sequence[str],
    limit: int,
    query_types: Sequence[str],
    tokenizer,
    hf_tokenizer,
):
  """Lists of Cases, one list per engine call of the runner (bmike_jax/workload.py)."""
  groups = []
  for dataset in datasets:
    pool = data_lib.load_pool(data_dir, dataset)
    for lang in langs:
      loaded = data_lib.load_file(data_dir, dataset, lang, limit=limit)
      for setup in setups:
        for group in workload.unit_groups(
            loaded=loaded, pool=pool, setup=setup, query_types=query_types
        ):
          groups.append(
              [
                  Case(
                      name=name,
                      dataset=dataset,
                      setup=setup,
                      lang=loaded.lang,
                      query_type=q.query_type,
                      prompt=q.prompt,
                      prompt_ids=tuple(tokenizer.encode(q.prompt)),
                      reference_ids=tuple(hf_tokenizer(q.prompt)["input_ids"]),
                  )
                  for q, name in zip(group.queries, group.names)
              ]
          )
  return groups


def run_engine(engine, groups) -> tuple[list[list[Case]], float]:
  out, t0 = [], time.perf_counter()
  for cases in groups:
    results = engine.generate([c.prompt_ids for c in cases], prompt_names=[c.name for c in cases])
    out.append(
        [
            dataclasses.replace(c, engine_answer=r.text, engine_new_ids=tuple(r.ids))
            for c, r in zip(cases, results)
        ]
    )
  return out, time.perf_counter() - t0


def run_reference(hf_model, hf_tokenizer, groups, max_new_tokens: int = 15):
  from tools import reference_hf

  out, t0 = [], time.perf_counter()
  for cases in groups:
    done = []
    for c in cases:
      _, new, text = reference_hf.reference_answer(
          hf_model, hf_tokenizer, list(c.reference_ids), max_new_tokens
      )
      done.append(dataclasses.replace(c, reference_answer=text, reference_new_ids=tuple(new)))
    out.append(done)
  return out, time.perf_counter() - t0


def merge(engine_groups, reference_groups) -> list[Case]:
  return [
      dataclasses.replace(
          e, reference_answer=r.reference_answer, reference_new_ids=r.reference_new_ids
      )
      for eg, rg in zip(engine_groups, reference_groups)
      for e, r in zip(eg, rg)
  ]


def report(cases: Sequence[Case]) -> str:
  """Agreement overall and per setup x language, then every differing case side by side."""
  lines = []
  n_agree = sum(c.agrees for c in cases)
  lines.append(f"agreement: {n_agree}/{len(cases)} = {100.0 * n_agree / max(len(cases), 1):.2f}%")
  token_diff = sum(c.prompt_ids != c.reference_ids for c in cases)
  lines.append(f"prompts whose token ids differ between our tokenizer and HF's: {token_diff}")
  keys = sorted({(c.setup, c.lang) for c in cases})
  for setup, lang in keys:
    sub = [c for c in cases if (c.setup, c.lang) == (setup, lang)]
    lines.append(f"  {setup:18s} {lang:3s} {sum(c.agrees for c in sub)}/{len(sub)}")
  for c in cases:
    if not c.agrees:
      lines.append(
          f"DIFF {c.name}\n  reference: {c.reference_answer!r} {list(c.reference_new_ids)}"
          f"\n  engine:    {c.engine_answer!r} {list(c.engine_new_ids)}"
          + ("\n  (prompt token ids differ)" if c.prompt_ids != c.reference_ids else "")
      )
  return "\n".join(lines)


def define_flags():
  from absl import flags

  flags.DEFINE_list("langs", ["de", "ru", "zh", "th"], "Target languages.")
  flags.DEFINE_list("setups", list(prompts_lib.SETUPS), "Prompt setups.")
  flags.DEFINE_list("datasets", ["zsre"], "Datasets.")
  flags.DEFINE_list("query_types", list(data_lib.QUERY_TYPES), "Query types.")
  flags.DEFINE_integer("limit", 5, "Records per dataset x language.")
  flags.DEFINE_string("data_dir", None, "BMIKE-53 data (default: tools/paths.py's).")
  flags.DEFINE_string("checkpoint", None, "Model (default: the embedded SmolLM2-135M GGUF).")
  flags.DEFINE_integer("batch_size", 8, "Engine batch size.")
  flags.DEFINE_bool("prefix_reuse", True, "Engine shared-prefix reuse.")
  flags.DEFINE_list("length_buckets", None, "Engine length buckets (default: the engine's).")
  flags.DEFINE_bool("suffix_packing", False, "Engine packed suffix rows.")
  flags.DEFINE_integer("packed_length", 512, "Engine packed_length (with --suffix_packing).")
  flags.DEFINE_integer("packed_rows", 4, "Engine packed_rows (with --suffix_packing).")


def main(argv):
  del argv
  from absl import flags

  from bmike_jax import checkpoints
  from bmike_jax import tokenizer as tokenizer_lib
  from bmike_jax.engine import Engine
  from tools import paths
  from tools import reference_hf

  f = flags.FLAGS
  source = f.checkpoint or checkpoints.default_gguf_path()
  data_dir = f.data_dir or paths.default_data_dir()
  config, params = checkpoints.load_model(source)
  tokenizer = tokenizer_lib.load_tokenizer(source)
  hf_model = reference_hf.load_hf_model(source)
  hf_tokenizer = reference_hf.load_hf_tokenizer(source)
  groups = build_groups(
      data_dir, f.datasets, f.setups, f.langs, f.limit, f.query_types, tokenizer, hf_tokenizer
  )
  engine = Engine(
      config,
      params,
      tokenizer,
      batch_size=f.batch_size,
      prefix_reuse=f.prefix_reuse,
      length_buckets=[int(x) for x in f.length_buckets] if f.length_buckets else None,
      suffix_packing=f.suffix_packing,
      packed_length=f.packed_length,
      packed_rows=f.packed_rows,
  )
  engine_groups, engine_s = run_engine(engine, groups)
  reference_groups, reference_s = run_reference(hf_model, hf_tokenizer, groups)
  cases = merge(engine_groups, reference_groups)
  print(report(cases))
  packed = sum(k[0] == "generate_packed" for k in engine.programs.compiles)
  print(
      f"engine: {engine_s:.1f}s ({engine.compile_count} programs compiled, {packed} packed); "
      f"HF one at a time: {reference_s:.1f}s; {len(cases)} prompts"
  )


if __name__ == "__main__":
  from absl import app

  define_flags()
  app.run(main)
