"""Chapter 03: loading a checkpoint transformers wrote."""

import pytest
from tutorial import run_chapter

import weights


def test_chapter_runs_and_prints_what_it_shows():
    pytest.importorskip("transformers")
    run_chapter(3)


def test_name_table_maps_every_llama_tensor():
    from minivtp.model import Config, Transformer
    cfg = Config(vocab_size=10, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=32)
    ours = {weights.hf_to_ours(n) for n in weights.hf_names(cfg)}
    assert ours == {n for n, _ in Transformer(cfg).named_parameters()}
    assert weights.hf_to_ours("model.layers.1.self_attn.q_norm.weight") is None
