"""Chapter 02: RoPE with explicit positions, and the KV cache's slots."""

import torch
from tutorial import run_chapter

from minivtp.model import EMPTY, Config, KVCache, apply_rope, rope_cos_sin


def test_chapter_runs_and_prints_what_it_shows():
    run_chapter(2)


def test_split_halves_pairs_channel_i_with_i_plus_half():
    cfg = Config(dim=16, n_heads=2, n_kv_heads=2)  # D = 8
    cos, sin = rope_cos_sin(cfg, torch.tensor([1]))
    x = torch.zeros(1, 1, 1, 8)
    x[..., 0] = 1.0  # channel 0 alone rotates into channel 4, not channel 1
    y = apply_rope(x, cos, sin)
    assert y[..., 4].abs() > 0.5 and y[..., 1] == 0


def test_update_returns_filled_rows_with_positions():
    cache = KVCache(1, 1, 6, 2)
    k = torch.randn(1, 1, 3, 2)
    K, V, P = cache.append(k, k, torch.tensor([0, 1, 2]))
    assert K.shape[2] == 3 and P.tolist() == [0, 1, 2] and (cache.pos[3:] == EMPTY).all()
