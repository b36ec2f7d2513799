"""Each weight editor on a tiny random Llama (CPU, float32): its defining property holds, the
base params stay bit-exact, and a batch of edits (vmapped) gives the same answers as the edits one
at a time (same padded shapes; deltas equal to float32 round-off)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from bmike_jax.editing import answers, methods
from bmike_jax.editing import delta as delta_lib
from bmike_jax.editing.forward import forward
from bmike_jax.editing.ft import FTConfig
from bmike_jax.editing.kn import KNConfig
from bmike_jax.editing.lora import LoRAConfig
from bmike_jax.editing.request import EditRequest
from bmike_jax.editing.rome import ROMEConfig
from tests.editing_tiny import CharTokenizer
from tests.engine_tiny import tiny_config, tiny_params

REQUESTS = (
    EditRequest(
        prompt="Who rules Spain?", target="Ana", subject="Spain", ground_truth="Rome", name="r0"
    ),
    EditRequest(
        prompt="Where was Mozart born?",
        target="Oslo",
        subject="Mozart",
        ground_truth="Wien",
        name="r1",
    ),
)
PAD = {
    "ft": dict(length=32, max_targets=8),
    "lora": dict(length=32, max_targets=8),
    "rome": dict(length=48, max_targets=8),
    "kn": dict(length=48, max_answer=8),
}


@pytest.fixture(scope="module")
def model():
  """A tiny random Llama whose lm_head is scaled x8: with the default init the RMS-normed hidden
  state times a kernel of std 1/sqrt(D) bounds the logit spread so tightly that no next-token
  probability gets near 1 (a loss of 1e-2 is out of reach); real models are far peakier."""
  config = tiny_config()
  params = tiny_params(config)
  params = {**params, "lm_head": {"kernel": params["lm_head"]["kernel"] * 8}}
  return config, params, jax.tree_util.tree_map(np.array, params), CharTokenizer()


def _edit(model, name, hp, requests=REQUESTS):
  config, params, _, tok = model
  return methods.edit(name, config, params, tok, list(requests), hp, **PAD[name])


def _answers(model, delta):
  config, params, _, tok = model
  edited = delta_lib.apply_delta(params, delta)
  return answers.teacher_forced(
      config, edited, tok, [r.prompt for r in REQUESTS], [r.target for r in REQUESTS]
  )


def _check_batched_equals_single(model, name, hp, batched):
  """Row r of the batch == request r edited alone: the answers exactly; the deltas to atol 1e-4.
  The batched programs accumulate their dots in another order, and Adam divides each gradient
  element by its running RMS, so float32 round-off in elements whose gradient is near zero turns
  into a relative error of the update (seen: 2e-6 absolute after 30 steps, and 2.8e-5 on one LoRA
  element after 70 steps on a 2026-12-06 machine, against updates of up to lr x steps = 0.35 per
  element; another request's row would differ by O(0.1))."""
  for r, request in enumerate(REQUESTS):
    single, _ = _edit(model, name, hp, [request])
    one, many = delta_lib.row(single, 0), delta_lib.row(batched, r)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4), one, many
    )
    assert _answers(model, one) == _answers(model, many)


def _check_base_untouched(model):
  _, params, saved, _ = model
  jax.tree_util.tree_map(np.testing.assert_array_equal, saved, params)


def test_ft_teacher_forced_reaches_stop_loss(model):
  hp = FTConfig(layer=1, steps=30, lr=1e-2, objective="teacher_forced")
  delta, (losses, final) = _edit(model, "ft", hp)
  assert np.all(np.asarray(final) < hp.stop_loss), final
  assert np.all(np.asarray(losses)[:, 0] > hp.stop_loss)
  assert set(delta) == {"mlp/down/kernel"} and set(delta["mlp/down/kernel"]) == {1}
  _check_batched_equals_single(model, "ft", hp, delta)
  _check_base_untouched(model)


def test_ft_prompt_last_objective_is_bounded_by_the_number_of_target_tokens(model):
  """The reference's quirk: all target tokens read at one position, so the mean NLL cannot go
  below log(#distinct tokens): with several target tokens the 1e-2 stop is never reached."""
  config, params, _, tok = model
  hp = FTConfig(layer=1, steps=30, lr=1e-2)
  _, (losses, final) = _edit(model, "ft", hp)
  for r, request in enumerate(REQUESTS):
    targets = tok.encode(" " + request.target, add_bos=True)
    bound = sum(
        -c / len(targets) * math.log(c / len(targets))
        for c in (targets.count(t) for t in set(targets))
    )
    assert bound - 1e-4 <= float(final[r]) < float(losses[r, 0])
    assert float(final[r]) > hp.stop_loss


def test_lora_reaches_stop_loss(model):
  hp = LoRAConfig(steps=30, lr=1e-2, stop_loss=1e-2, suffix="")
  delta, (losses, final) = _edit(model, "lora", hp)
  assert np.all(np.asarray(final) < hp.stop_loss), final
  assert set(delta) == {"attn/q/kernel", "attn/v/kernel"}
  _check_batched_equals_single(model, "lora", hp, delta)
  _check_base_untouched(model)


def test_rome_maps_key_to_value(model):
  config, params, _, tok = model
  hp = ROMEConfig(layer=0, context_templates=("Hi there. {}", "So. {}"))
  delta, info = _edit(model, "rome", hp)
  for r, request in enumerate(REQUESTS):
    edited = delta_lib.apply_delta(params, delta_lib.row(delta, r))
    kernel = edited["layers"]["mlp"]["down"]["kernel"][0]
    key, value = info["key"][r], info["value"][r]
    assert np.all(np.isfinite(value))
    np.testing.assert_allclose(key @ kernel, value, rtol=1e-4, atol=1e-4)
    # and in a forward pass: the down output at the subject's last token of the bare prompt
    ids = tok.encode(request.prompt)
    last = (
        len(tok.encode(request.prompt[: request.prompt.index(request.subject)] + request.subject))
        - 1
    )
    _, trace = forward(config, edited, np.asarray([ids]), capture_layer=0)
    np.testing.assert_allclose(trace.down_out[0, last], value, rtol=1e-4, atol=1e-4)
    assert not np.allclose(info["v0"][r], value)  # the value search moved
    assert float(info["final_loss"][r]) < float(info["losses"][r, 0])
  _check_batched_equals_single(model, "rome", hp, delta)
  _check_base_untouched(model)


@pytest.mark.parametrize("attribution", ["reference", "prediction"])
def test_kn_changes_exactly_the_chosen_rows(model, attribution):
  config, params, saved, tok = model
  hp = KNConfig(attribution=attribution)
  delta, info = _edit(model, "kn", hp)
  embed = saved["embed"]["embedding"]
  for r, request in enumerate(REQUESTS):
    chosen = np.asarray(info["chosen"][r])
    assert 0 < chosen.sum() < chosen.size
    scores = np.asarray(info["scores"][r])
    np.testing.assert_array_equal(chosen, scores > scores.max() * hp.adaptive_threshold)
    edited = delta_lib.apply_delta(params, delta_lib.row(delta, r))
    new = np.asarray(edited["layers"]["mlp"]["down"]["kernel"])
    old = saved["layers"]["mlp"]["down"]["kernel"]
    np.testing.assert_array_equal(new[~chosen], old[~chosen])
    target = tok.encode(request.target, add_bos=True)
    greedy = np.asarray(info["greedy"][r])[: len(target)]
    vec = embed[target].sum(0) - embed[greedy].sum(0)
    np.testing.assert_allclose(new[chosen], old[chosen] + vec, rtol=1e-5, atol=1e-5)
  if attribution == "reference":
    _check_batched_equals_single(model, "kn", hp, delta)
  _check_base_untouched(model)
