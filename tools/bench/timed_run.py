"""python -m tools.bench.timed_run --timing=FILE.json [the runner's flags]: `bmike_jax.main` as it
is, plus the seconds jax spent compiling (tracing, lowering, XLA backend compile; the same clock as
tools/bench_cpu) and the wall time, written to FILE.json at exit, also when the run is stopped by a
signal (SIGTERM from `timeout`): what a measurement on a lent accelerator needs of a cold run."""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time

from absl import app
from absl import flags

from bmike_jax import main as runner_main
from tools.bench import worker

flags.DEFINE_string("timing", None, "Write the run's wall and compile seconds here (JSON).")
FLAGS = flags.FLAGS


def main(argv):
  clock = worker._CompileClock()  # pylint: disable=protected-access
  t0 = time.perf_counter()

  def write():
    if FLAGS.timing:
      doc = {
          "wall_seconds": round(time.perf_counter() - t0, 2),
          "compile_seconds": round(clock.total(), 2),
          "compile_seconds_by_phase": {k: round(v, 2) for k, v in clock.seconds.items()},
          "argv": sys.argv[1:],
      }
      with open(FLAGS.timing, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)

  def stopped(*_):  # `timeout`'s SIGTERM: the timing now, then out at once (finished units are
    write()  # on disk already; unwinding through jax's threads can crash the interpreter)
    os._exit(124)  # pylint: disable=protected-access

  atexit.register(write)
  signal.signal(signal.SIGTERM, stopped)
  runner_main.main(argv)


if __name__ == "__main__":
  app.run(main)
