"""The likelihood comparison's 1/PPL equals the reference's (`icl_lm_eval_ppls` of MultiKnow's
icl.py: HF torch loss over the last len(encode(target)) tokens of prompt+target), also for an
empty target, where the reference's `[:, :-0]` masks nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bmike_jax import checkpoints
from bmike_jax import data as data_lib
from bmike_jax import prompts
from bmike_jax import tokenizer as tokenizer_lib
from bmike_jax.engine import Engine
from bmike_jax.runner import evaluate
from tests.tiny_checkpoint import make_tiny_checkpoint


def reference_inverse_ppl(model, hf_tokenizer, prompt: str, target: str) -> float:
  """The reference's computation, written out as icl.py does it (fp32 torch)."""
  tgt_len = len(hf_tokenizer.encode(target, add_special_tokens=False))
  input_ids = hf_tokenizer(prompt + target, return_tensors="pt")["input_ids"]
  labels = input_ids.clone()
  labels[:, :-tgt_len] = -100
  with torch.no_grad():
    loss = model(input_ids, labels=labels).loss
  return 1.0 / math.exp(loss.item())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  path = make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_lik")), seed=3)
  hf_model = transformers.LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  config, params = checkpoints.load_model(path)
  tok = tokenizer_lib.load_tokenizer(path)
  engine = Engine(config, params, tok, batch_size=4, length_buckets=(64, 128, 256, 512, 1024))
  return hf_model, hf_tokenizer, tok, engine


def test_inverse_ppl_matches_reference_formula(setup):
  hf_model, hf_tokenizer, tok, engine = setup
  data_dir = data_lib.default_data_dir()
  loaded = data_lib.load_file(data_dir, "counterfact", "de", limit=2)
  pool = data_lib.load_pool(data_dir, "counterfact")
  queries = []
  for record in loaded.records:
    for qt in ("reliability", "generality"):
      text = prompts.build_prompt(pool, "few_shot_mixed", "de", record, qt)
      queries.append(evaluate._Query(record, qt, text, tok.encode(text)))
  ours = evaluate._likelihoods(engine, evaluate._likelihood_jobs(tok, queries))
  for i, q in enumerate(queries):
    for field in ("alt", "loc_ans", "old"):
      expected = reference_inverse_ppl(
          hf_model, hf_tokenizer, q.prompt, getattr(q.record.target, field)
      )
      np.testing.assert_allclose(
          ours[i][f"inv_ppl_{field}"], expected, rtol=1e-4, err_msg=f"{field} of query {i}"
      )


def test_empty_target_scores_the_whole_sequence_like_the_reference(setup):
  hf_model, hf_tokenizer, tok, engine = setup
  prompt = 'New Fact: "Who wrote it? Anna"\nQuestion: "Wer schrieb es?" Answer: "'
  context, scored = evaluate.likelihood_split(tok, prompt, "")
  assert len(context) == 1 and context + scored == tok.encode(prompt)
  lp = engine.continuation_logprobs([context], [scored])[0]
  ours = math.exp(float(np.mean(lp)))
  np.testing.assert_allclose(
      ours, reference_inverse_ppl(hf_model, hf_tokenizer, prompt, ""), rtol=1e-4
  )
