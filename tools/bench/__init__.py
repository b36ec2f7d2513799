"""Parts of the benchmarks (tools/bench_cpu.py, tools/bench_gpu.py): the workload, the subprocess
worker of each CPU system, the batched HF baseline, FLOP and bandwidth floors, the synthetic GPU
measurement and shared output helpers."""
