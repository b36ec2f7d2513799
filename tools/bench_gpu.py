"""python -m tools.bench_gpu: the engine on one accelerator, a synthetic Llama-3.1-8B-shaped model.

Random bf16 weights, synthetic prompts with the token lengths (and shared demonstration prefix) of
the real prompts; measures prompts/s per setup, prefill MFU and the decode step against the HBM
floor, and projects the full sweep (tools/bench/gpu.py). Refuses to run without an accelerator.

    python -m tools.bench_gpu --output=outputs/bench/gpu

A GPU machine without the data or the embedded tokenizer takes the prompt lengths from a file
written where both are: `--write_lengths=lengths.json` here, `--lengths=lengths.json` there.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from tools import paths
from tools import tables
from tools.bench import common
from tools.bench import gpu

FLAGS = flags.FLAGS
MODULE = "tools.bench_gpu"

flags.DEFINE_string(
    "data_dir",
    None,
    "BMIKE-53 data folder whose prompt lengths the synthetic "
    "prompts copy (default: tools/paths.py's).",
)
flags.DEFINE_string("dataset", "zsre", "Dataset whose prompt lengths are copied.")
flags.DEFINE_list("langs", ["de", "zh"], "Languages whose prompt lengths are copied.")
flags.DEFINE_integer("records", 64, "Records per language whose prompt lengths are copied.")
flags.DEFINE_list(
    "setups",
    ["zero_shot", "one_shot", "few_shot_mixed"],
    "Setups measured " "(few_shot_specific is projected from few_shot_mixed).",
)
flags.DEFINE_integer("batch_size", 64, "Engine batch size.")
flags.DEFINE_list("length_buckets", [], "Engine length buckets (default: configs/8b.flags').")
flags.DEFINE_integer("max_new_tokens", 15, "Greedy tokens per answer (the reference uses 15).")
flags.DEFINE_float(
    "hbm_bandwidth",
    0.0,
    "HBM bytes/s (0: from the device table, e.g. H100 SXM " "3.35e12, H200 4.8e12).",
)
flags.DEFINE_float(
    "peak_flops",
    0.0,
    "Dense bf16 FLOP/s for MFU (0: from the device table, e.g. "
    "989e12 for H100 SXM / H200; else the measured matmul peak).",
)
flags.DEFINE_integer("decode_repeats", 3, "Timed repeats of each decode measurement (best kept).")
flags.DEFINE_integer("matmul_size", 8192, "n of the bf16 matmul peak measurement.")
flags.DEFINE_enum(
    "model",
    "llama3_8b",
    ["llama3_8b", "tiny"],
    "tiny: toy sizes, to smoke-test " "the code (with --allow_cpu).",
)
flags.DEFINE_string(
    "lengths",
    None,
    "Read the real prompts' token lengths from this file "
    "(written by --write_lengths where the data and the embedded tokenizer are) "
    "instead of tokenizing here.",
)
flags.DEFINE_string(
    "write_lengths",
    None,
    "Write the real prompts' token lengths of the workload "
    "(--dataset, --langs, --records, --setups) to this file and exit; needs no "
    "accelerator.",
)
flags.DEFINE_boolean(
    "allow_cpu", False, "Run on CPU too (smoke tests only; its numbers mean " "nothing there)."
)
flags.DEFINE_string(
    "output",
    None,
    "Write the markdown report here and the raw numbers to " "the same path with a .json suffix.",
)


def _write_lengths(data_dir: str) -> None:
  lengths, source = gpu.real_lengths(
      data_dir, FLAGS.dataset, FLAGS.langs, FLAGS.records, FLAGS.setups
  )
  if source["tokenizer"].startswith("none"):
    print(f"bench: --write_lengths: {source['tokenizer']}; nothing written", file=sys.stderr)
    sys.exit(1)
  gpu.write_lengths(FLAGS.write_lengths, lengths, source)
  common.log(
      f"wrote the prompt lengths of {sum(len(s) for g in lengths.values() for _, s in g)} "
      f"prompts to {FLAGS.write_lengths}"
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  data_dir = FLAGS.data_dir or paths.default_data_dir()
  if FLAGS.write_lengths:
    _write_lengths(data_dir)
    return
  given = None  # read before anything is measured: a bad file stops the run at once
  if FLAGS.lengths:
    try:
      given = gpu.read_lengths(FLAGS.lengths, FLAGS.setups)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
  if not gpu.is_accelerator() and not FLAGS.allow_cpu:
    import jax

    print(
        "bench: tools.bench_gpu needs a GPU (or TPU); this machine's JAX sees only "
        f"{[d.platform for d in jax.devices()]} devices. Install jax[cuda12] on a GPU machine "
        "and rerun; nothing was measured.",
        file=sys.stderr,
    )
    sys.exit(2)
  config = gpu.GpuBenchConfig(
      model=FLAGS.model,
      batch_size=FLAGS.batch_size,
      setups=tuple(FLAGS.setups),
      length_buckets=tuple(int(x) for x in FLAGS.length_buckets),
      max_new_tokens=FLAGS.max_new_tokens,
      decode_repeats=FLAGS.decode_repeats,
      matmul_size=FLAGS.matmul_size,
      hbm_bandwidth=FLAGS.hbm_bandwidth,
      peak_flops=FLAGS.peak_flops,
  )
  lengths, source = given or gpu.real_lengths(
      data_dir, FLAGS.dataset, FLAGS.langs, FLAGS.records, FLAGS.setups
  )
  raw = {
      "section": "gpu",
      **gpu.run(config, lengths, source),
      "command": common.command_line(MODULE),
  }
  common.write_outputs(md=tables.render(raw), raw=raw, output=FLAGS.output)


if __name__ == "__main__":
  app.run(main)
