"""Chapter 11: the rivals side by side."""

import math

import torch
from tutorial import run_chapter
from minivtp.rivals import FastV, LookM


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(11)
    assert ns["kept"].numel() + 1 == ns["tokens"].shape[0]  # the merged extra token


def test_what_the_chapter_says_each_rule_keeps():
    ns = run_chapter(11)
    toy, Method, model, sample = ns["toy"], ns["Method"], ns["model"], ns["sample"]
    _, vtp = toy.ask(model, sample, method=Method(alpha=0.2, layer=1))
    per_frame = [((vtp.kept - 2) // 9 == t).sum().item() for t in range(8)]
    assert per_frame == [2] * 8  # ceil(0.2 * 9) in every frame
    _, fastv = toy.ask(model, sample, method=FastV(alpha=0.2, layer=1))
    assert fastv.kept.numel() == math.ceil(0.2 * 72)
    _, look_m = toy.ask(model, sample, method=LookM(recent=0.1, important=0.15))
    rows = look_m.pruning.rows.tolist()
    assert {0, 1} <= set(rows)  # the prefix rows: text first
    N = look_m.prompt_len
    assert set(range(N - int(N * 0.1), N)) <= set(rows)  # the recent window
    assert len(rows) == int(N * 0.1) + int(N * 0.15)
    # PruMerge+: the outliers are exactly the scores above the fence
    a = ns["a"][0]
    q1, q3 = torch.quantile(a, torch.tensor([0.25, 0.75]))
    assert sorted(ns["outliers"].tolist()) == (a > q3 + 1.5 * (q3 - q1)).nonzero().flatten().tolist()
