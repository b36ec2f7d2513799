"""python -m bmike_jax.main --flagfile=configs/8b.flags: the whole BMIKE-53 benchmark.

Short glue: flags -> RunConfig -> runner.run. User errors end with one message and exit code 2;
finished units are already on disk and a rerun with the same flags resumes.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from bmike_jax.runner import run_config

run_config.define_flags()
# `--help` lists the runner's flags (absl shows a module's key flags; they live in run_config).
flags.adopt_module_key_flags(run_config)


def _user_errors() -> tuple[type[BaseException], ...]:
  from bmike_jax import checkpoints, data, languages, paths  # noqa: F401
  from bmike_jax.editing import stats
  from bmike_jax.engine import buckets
  from bmike_jax.model import config
  from bmike_jax.runner import store

  return (
      run_config.FlagError,
      data.DataError,
      store.OutputError,
      checkpoints.CheckpointError,
      config.ConfigError,
      buckets.PromptTooLongError,
      paths.PathError,
      stats.CorpusError,
  )


def _progress_bar(total: int, initial: int):
  import tqdm

  return tqdm.tqdm(total=total, initial=initial, unit="unit", dynamic_ncols=True, file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  errors = _user_errors()
  try:
    cfg = run_config.from_flags()
    from bmike_jax.runner import model_setup, run

    run.run(
        cfg,
        run_config.flag_values(),
        model_setup.build_engine,
        progress=_progress_bar if cfg.progress else None,
    )
  except errors as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def entry() -> None:
  """The console script (setup.py entry_points)."""
  app.run(main)


if __name__ == "__main__":
  app.run(main)
