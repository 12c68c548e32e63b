"""Chapter 08: what pruning buys."""

from tutorial import run_chapter

from minivtp.flops import PRESETS, layer_flops


def test_chapter_runs_and_prints_what_it_shows():
    run_chapter(8)


def test_layer_cost_grows_linearly_then_quadratically():
    cfg = PRESETS["pllava-7b"]["cfg"]
    a, b = layer_flops(cfg, 1000), layer_flops(cfg, 2000)
    attn = 4 * cfg.n_heads * cfg.head_dim
    assert b - 2 * a == attn * (2000**2 - 2 * 1000**2)
