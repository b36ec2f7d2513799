"""Developer tools of the repository, not installed with the package (setup.py installs
`bmike_jax` only). Run them from the repository root, e.g. `python -m tools.bench_cpu`:

- bench_cpu.py, bench_gpu.py: the benchmarks of BENCHMARKS.md (CPU against HF transformers; GPU on
  a synthetic 8B model); tables.py renders their tables from the saved JSON; bench/: their parts.
- decode_probe.py: where a decode step's time goes on an accelerator, variant by variant.
- fidelity.py: engine answers against HF transformers on real prompts.
- reference_hf.py: the HF torch reference (tests, benchmarks and fidelity).
- make_sample.py: cuts the shipped sample data from the full bmike53 folder.
- compare_runs.py: two runs' answers and aggregate cells side by side (e.g. float32 vs bfloat16).
- prompt_lengths.py: mean prompt length in a tokenizer's tokens per setup and script group.
- paths.py: where the full BMIKE-53 data of this workspace is.
"""
