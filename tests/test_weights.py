"""weights.load against transformers' own forward pass, on checkpoints transformers wrote itself."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import transformers, write_llama
from safetensors.torch import load_file, save_file

import weights

ROOT = Path(__file__).resolve().parents[1]


# float32 on both sides, the same operations in the same order: python tools/oracle_errors.py measures 0 exactly
# (every VARIANT, 3 checkpoints x 5 prompts). The bound is not 0 because another order of the same operations
# moves the last bits: tried once, the written-out attention or q, k, v as one matmul gave up to 1.6e-6. 1e-5 is
# 6x that, and 10x tighter than the 1e-4 it was. Small bugs, tried: RMSNorm's eps ten times too large 9e-4, RoPE's
# theta 1% off 1.4e-2.
LOGITS_TOL = 1e-5


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


VARIANTS = {
    "multi-head": dict(),
    "grouped-query, sharded": dict(num_key_value_heads=2, max_shard_size="30KB"),
    "multi-query": dict(num_key_value_heads=1, num_hidden_layers=1),
    "tied embeddings": dict(tie_word_embeddings=True),
    "explicit head_dim": dict(head_dim=16, num_key_value_heads=3),
    "biases": dict(attention_bias=True, mlp_bias=True),
    "rope theta 5e5": dict(rope_theta=5e5),
    "rope linear scaling": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "rope llama3 scaling": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                rope_theta=500.0),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_equal_transformers(tmp_path, name):
    hf = write_llama(tmp_path, **VARIANTS[name])
    model = weights.load(tmp_path)
    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(tokens), hf(tokens).logits
    assert ours.shape == (2, 40, 97) and ours.dtype == torch.float32
    assert ref.abs().max() > 1.0  # the oracle's logits are not all ~0, so the comparison means something
    assert rel_err(ours, ref) <= LOGITS_TOL


def test_bf16_stored_checkpoint_loads_at_float32(tmp_path):
    write_llama(tmp_path, dtype=torch.bfloat16, num_key_value_heads=2)
    assert load_file(tmp_path / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    model = weights.load(tmp_path, dtype=torch.float32)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = torch.randint(0, 97, (1, 33))
    with torch.no_grad():
        assert rel_err(model(tokens), hf(tokens).logits) <= LOGITS_TOL
    assert model.embed.weight.dtype == torch.float32


def test_load_in_bf16_matches_transformers_in_bf16(tiny_llama):
    path, _ = tiny_llama
    tokens = torch.randint(0, 97, (1, 33), generator=torch.Generator().manual_seed(4))
    hf16 = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        ours = weights.load(path, dtype=torch.bfloat16)(tokens)
        ref = hf16(tokens).logits.float()
    # Both sides round to bf16 (8 bits of mantissa) at the same places; 1e-2 of the largest logit is the
    # bf16-operand range, loose enough for a different kernel order, tight enough for a wrong weight.
    assert ours.dtype == torch.float32 and rel_err(ours, ref) <= 1e-2


def test_model_is_on_the_requested_device_with_no_meta_left(tiny_llama):
    model = weights.load(tiny_llama[0])
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


# ---- refusals: one clear error that names the file and the tensor ------------------------------------------


@pytest.fixture
def single(tmp_path):
    write_llama(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def rewrite(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_refuses_pickle_only_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle; it must never be opened")
    with pytest.raises(weights.CheckpointError, match="pytorch_model.bin.*safetensors only"):
        weights.load(tmp_path)


def test_refuses_missing_tensor(single):
    rewrite(single, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(weights.CheckpointError, match=r"layers\.1\.mlp\.w_up"):
        weights.load(single)


def test_refuses_wrong_shape(single):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]
    rewrite(single, shrink)
    with pytest.raises(weights.CheckpointError, match=r"model.safetensors: tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape \[47, 48\]"):
        weights.load(single)


def test_refuses_unknown_tensor(single):
    rewrite(single, lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}))
    with pytest.raises(weights.CheckpointError, match="q_norm.weight does not belong"):
        weights.load(single)


def test_refuses_truncated_file(single):
    f = single / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(weights.CheckpointError, match="model.safetensors: not a readable safetensors file"):
        weights.load(single)


def test_refuses_missing_shard(tmp_path):
    write_llama(tmp_path, max_shard_size="30KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(weights.CheckpointError, match=f"lists shard {shard.name}"):
        weights.load(tmp_path)


def test_refuses_unsupported_rope(single):
    cfg = json.loads((single / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}
    (single / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        weights.load(single)


def test_old_inv_freq_buffers_are_recognised(tmp_path):
    """Old checkpoints store RoPE's frequencies as rotary_emb.inv_freq. They are derived from the config, not an
    unknown tensor, and not used: these are all ones (D/2 = 4 of them), which would turn every pair alike."""
    hf = write_llama(tmp_path)
    clean = weights.load(tmp_path)
    rewrite(tmp_path, lambda t: t.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(4)
                                           for i in range(3)}))
    model = weights.load(tmp_path)
    tokens = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, ref = model(tokens), hf(tokens).logits
        assert torch.equal(ours, clean(tokens))
    assert rel_err(ours, ref) <= LOGITS_TOL


# ---- the command line --------------------------------------------------------------------------------------


def run_cli(path):
    return subprocess.run([sys.executable, str(ROOT / "weights.py"), str(path)], capture_output=True, text=True,
                          cwd=ROOT)


def test_cli_describes_a_checkpoint(tiny_llama):
    out = run_cli(tiny_llama[0])
    assert out.returncode == 0, out.stderr
    assert "layers       3" in out.stdout
    assert "6 query, 2 key/value: grouped-query" in out.stdout
    n_params = sum(p.numel() for p in tiny_llama[1].parameters())
    assert f"parameters   {n_params:,}" in out.stdout
    n_shards = len(list(Path(tiny_llama[0]).glob("model-*.safetensors")))
    assert f"shards       {n_shards}:" in out.stdout and "F32" in out.stdout


def test_cli_one_line_on_a_broken_checkpoint(single, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(single, broken)
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    out = run_cli(broken)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and "model.safetensors" in out.stderr
