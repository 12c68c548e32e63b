"""Qwen2 (the decoder of LLaVA-OneVision and LLaVA-Video) against transformers' Qwen2ForCausalLM, on checkpoints
it wrote itself: what Qwen2 adds to LLaMA is bias on q, k and v (not o), a larger RoPE theta, and sliding-window
settings that minivtp honours only where they hide nothing."""

import json

import pytest
import torch
from conftest import randomize, transformers

import weights
from minivtp.hf_config import config_from_hf


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def qwen2_config(**overrides):
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    base.update(overrides)
    return transformers.Qwen2Config(**base)


def write_qwen2(path, seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    model = randomize(transformers.Qwen2ForCausalLM(qwen2_config(**overrides)), seed).eval()
    model.to(dtype).save_pretrained(path)
    return model.float()


VARIANTS = {
    "grouped-query": dict(),
    "multi-head, tied": dict(num_key_value_heads=6, tie_word_embeddings=True),
    "multi-query": dict(num_key_value_heads=1),
    "a window longer than any prompt": dict(use_sliding_window=True, sliding_window=256, max_window_layers=1),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_equal_qwen2_float32(tmp_path, name):
    hf = write_qwen2(tmp_path, **VARIANTS[name])
    model = weights.load(tmp_path)
    a = model.layers[0].attn
    assert a.wq.bias is not None and a.wk.bias is not None and a.wv.bias is not None and a.wo.bias is None
    assert model.cfg.rope_theta == 1e6
    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(tokens), hf(tokens).logits
    assert ref.abs().max() > 1.0 and ours.shape == ref.shape
    # float32 both sides, the same operations in the same order: 1e-5 of the largest logit is a few ulps of
    # reassociation in the matmul kernels; a missing bias or a wrong theta is off by 1e-1 or more
    assert rel_err(ours, ref) <= 1e-5


def test_the_biases_and_theta_matter(tmp_path):
    hf = write_qwen2(tmp_path)
    model = weights.load(tmp_path)
    tokens = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens).logits
        for layer in model.layers:
            layer.attn.wk.bias.zero_()
        assert rel_err(model(tokens), ref) > 1e-3  # the test above would see a loader that dropped the k bias


def test_bf16_matches_transformers_in_bf16(tmp_path):
    write_qwen2(tmp_path, dtype=torch.bfloat16)
    tokens = torch.randint(0, 97, (1, 33), generator=torch.Generator().manual_seed(4))
    hf16 = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        ours = weights.load(tmp_path, dtype=torch.bfloat16)(tokens)
        ref = hf16(tokens).logits.float()
    # as the LLaMA bf16 test: both round to bf16 at the same places, 1e-2 of the largest logit
    assert ours.dtype == torch.float32 and rel_err(ours, ref) <= 1e-2


def test_a_sliding_window_that_would_hide_keys_is_refused_by_name(tmp_path):
    write_qwen2(tmp_path, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    hf = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match=r"use_sliding_window is true with sliding_window=16 .* layers 1\.\. "
                                         r"\(max_window_layers=1\)"):
        weights.load(tmp_path)
    hf["use_sliding_window"] = False  # what Qwen2-7B and both hosts ship
    assert config_from_hf(hf).qkv_bias


def test_other_model_types_are_still_refused():
    with pytest.raises(ValueError, match="'mistral' is not a LLaMA or Qwen2 decoder"):
        config_from_hf(dict(model_type="mistral", vocab_size=8, hidden_size=8, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=8))
