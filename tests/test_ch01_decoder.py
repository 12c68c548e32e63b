"""Chapter 01: the decoder in one file."""

import torch
from tutorial import run_chapter

from minivtp.model import Block, Config, Transformer, attention_fused, attention_manual, rms_norm, swiglu


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(1)
    assert tuple(ns["logits"].shape) == (1, 7, 100) and ns["cfg"].head_dim == 16


def test_rms_norm_gives_unit_rms_rows():
    x = torch.randn(3, 64) * 5
    y = rms_norm(x, torch.ones(64), 1e-6)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3), rtol=1e-4, atol=1e-4)


def test_swiglu_is_silu_gate_times_up():
    g, u = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(swiglu(g, u), g * torch.sigmoid(g) * u)


def test_block_is_pre_norm_residual():
    cfg = Config(vocab_size=10, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=32)
    block = Block(cfg)
    for p in block.attn.wo.parameters():
        p.data.zero_()
    for p in block.mlp.w_down.parameters():
        p.data.zero_()
    x = torch.randn(1, 3, 16)
    pos = torch.arange(3)
    cos, sin = Transformer(cfg).rope(pos)
    torch.testing.assert_close(block(x, cos, sin, pos), x)  # zero output projections: only the residual is left


def test_manual_equals_fused_on_the_chapter_shapes():
    q, k, v = torch.randn(1, 4, 5, 16), torch.randn(1, 4, 5, 16), torch.randn(1, 4, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(attention_manual(q, k, v, mask), attention_fused(q, k, v, mask), atol=1e-6, rtol=1e-5)
