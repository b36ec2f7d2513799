"""Answers and log-probs are the same on 1, 2 and 4 fake CPU devices, on the data and model axes;
params follow the sharding table (with replication where a dimension does not divide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bmike_jax.engine import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mesh_runs():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "tests.engine_mesh_worker"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout)


def test_same_answers_and_logprobs_on_every_mesh(mesh_runs):
  for name in ("divisible", "fallback"):
    runs = mesh_runs[name]
    base = runs["1x1"]
    assert any(len(ids) < 15 for ids in base["ids"])
    # 14 rows in a batch of 16: the loop shrinks to 8, then 4 rows while rows still run.
    lengths = sorted(len(ids) for ids in base["shrink0_ids"])
    assert lengths[14 - 8 - 1] < 15 and lengths[14 - 4 - 1] < 15 and lengths[-1] == 15, lengths
    for mesh, run in runs.items():
      assert run["ids"] == base["ids"], (name, mesh)
      assert run["shrink2_ids"] == base["shrink0_ids"], (name, mesh)
      # decode rows carried between batches, handed on over the data axis
      assert run["carry_ids"] == base["shrink0_ids"], (name, mesh)
      assert run.get("unrolled_carry_ids", base["shrink0_ids"]) == base["shrink0_ids"], mesh
      assert run["unrolled_ids"] == base["ids"], (name, mesh)
      # groups without a shared prefix on an empty prefix region, sharded
      assert run["empty_prefix_buckets"] == [64], (name, mesh)
      assert run["empty_prefix_ids"] == base["ids"], (name, mesh)
      for got, ref in zip(run["empty_prefix_logprobs"], base["logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh} empty prefix")
      # rows of several edited models in one batch, each with its own weight delta
      assert run["delta_ids"] == base["delta_ids"], (name, mesh)
      assert run.get("unrolled_delta_ids", base["delta_ids"]) == base["delta_ids"], (name, mesh)
      for got, ref in zip(run["logprobs"], base["logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh}")
      for got, ref in zip(run["unrolled_logprobs"], base["logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh} unrolled")
      # record stems run once, sharded: the answers of the prompts run whole on one device
      assert run["stem_programs"] >= 1, (name, mesh)
      assert run["stem_ids"] == base["whole_ids"], (name, mesh)
      for got, ref in zip(run["stem_logprobs"], base["whole_logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh} stems")
      # packed suffix rows and packed scoring rests, sharded: the same answers and log-probs
      assert run["packed_programs"] >= 1 and run["rest_programs"] >= 1, (name, mesh)
      assert run["packed_ids"] == base["whole_ids"], (name, mesh)
      half = len(base["whole_logprobs"])
      for got, ref in zip(run["packed_logprobs"], base["whole_logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh} packed")
      for got, ref in zip(run["packed_logprobs"][half:], base["packed_logprobs"][half:]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh} packed rests")
      # the same rests scored inside the generate program: equal to the score_packed program's
      assert run["in_program_rest_programs"] == 0, (name, mesh)
      for got, ref in zip(run["in_program_logprobs"], run["packed_logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=f"{name} {mesh} in program")
      # record stems as segments of the packed rows, sharded
      assert run["packed_stem_tokens"] > 0, (name, mesh)
      assert run["packed_stem_ids"] == base["whole_ids"], (name, mesh)
      for got, ref in zip(run["packed_stem_logprobs"], base["whole_logprobs"]):
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=f"{name} {mesh} packed stems")
    assert base["whole_programs"] == 0
    assert base["delta_ids"] != base["delta_unedited_ids"], name  # the deltas reach the answers
    assert "unrolled_delta_ids" in runs[list(runs)[-1]], name


def test_param_table_applied(mesh_runs):
  runs = mesh_runs["divisible"]
  assert runs["1x4"]["q"] == [None, None, "model"]
  assert runs["1x4"]["k"] == [None, None, "model"]
  assert runs["1x4"]["down"] == [None, "model", None]
  assert runs["1x4"]["embed"] == ["model", None]
  assert runs["1x4"]["unrolled_q"] == [None, "model"]  # one layer's [D, H*Dh]
  assert runs["2x2"]["unrolled_down"] == ["model", None]  # one layer's [F, D]
  assert runs["1x4"]["norm"] == [None]
  assert runs["4x1"]["batch_buckets"] == [4, 8]
  fallback = mesh_runs["fallback"]["1x4"]
  assert fallback["q"] == [None, None, "model"] and fallback["k"] == [None, None, None]


def test_fit_spec_replicates_indivisible_dims():
  mesh = sharding.make_mesh(1, 1)
  assert sharding.fit_spec(P(None, "model"), (4, 6), mesh, "x") == P(None, "model")
  # A 1-device mesh divides everything; check the rule on sizes directly through units.

  class FakeMesh:
    shape = {"data": 2, "model": 4}

  assert sharding.fit_spec(P(None, "model"), (4, 6), FakeMesh(), "x") == P(None, None)
  assert sharding.fit_spec(
      P("data", None, "model"), (4, 3, 8), FakeMesh(), "x", units=[None, None, 2]
  ) == P("data", None, None)
  assert sharding.fit_spec(P("data"), (3,), FakeMesh(), "batch") == P(None)
