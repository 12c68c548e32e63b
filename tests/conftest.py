"""Tiny checkpoints written by Hugging Face transformers itself: the oracle every loader test compares against."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")


def llama_config(**overrides):
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=6, max_position_embeddings=256, rms_norm_eps=1e-6)
    base.update(overrides)
    return transformers.LlamaConfig(**base)


def randomize(model, seed=0, std=0.35):
    """transformers initialises with std 0.02, which makes every logit nearly 0 and every comparison easy.
    Larger random weights give logits and attention patterns that differ from row to row."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 4)
    return model


def write_llama(path, seed=0, dtype=torch.float32, max_shard_size=None, **overrides):
    """Save a random LlamaForCausalLM with save_pretrained; return the transformers model (float32, eval)."""
    torch.manual_seed(seed)
    model = randomize(transformers.LlamaForCausalLM(llama_config(**overrides)), seed).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(path, **kwargs)
    return model.float()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 3-layer grouped-query LLaMA, saved in 3+ shards: (directory, transformers model)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    hf = write_llama(path, num_key_value_heads=2, max_shard_size="40KB")
    assert json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    return path, hf
