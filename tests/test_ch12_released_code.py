"""Chapter 12: LLM-VTP as the authors' released code runs it, beside the paper's rule, measured on the toy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tutorial import run_chapter

from minivtp.lab import toy
from minivtp.lab.experiments import ALPHAS, RULES, measure, table
from minivtp.generate import Method

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chapter():
    return run_chapter(12)  # every snippet run, each printed output compared with the chapter's


def interval(x):  # the chapter's 95% interval of a mean, computed here again: mean +- 1.96 sd / sqrt(n)
    half = 1.96 * x.std().item() / len(x) ** 0.5
    return x.mean().item() - half, x.mean().item() + half


def test_chapter_runs_and_prints_what_it_shows(chapter):
    ns = chapter
    m1, m2 = ns["measured"][1], ns["measured"][2]
    assert set(m1) == set(RULES) and all(set(row) == set(ALPHAS) for row in m1.values())
    assert ns["res"]["n"] == 300 and ns["res"]["seed"] == 2024  # the command's defaults, its 300 questions
    # what the chapter's words claim, beyond its printed numbers
    for rule in ("released", "floor count"):  # int(9 * alpha) = 0: no video, the named patch never kept
        assert all(m[rule][a][1] == 0 for m in (m1, m2) for a in (0.05, 0.1))
    lo, hi = interval(ns["readings"][1, "released", 0.05][0])
    assert lo <= 0.25 <= hi  # at chance
    for rule in ("rope before", "no causal mask", "max over questions"):  # clean attention at M = 1
        assert all(abs(m1[rule][a][0] - m1["paper"][a][0]) <= 1 / 300 + 1e-9 and m1[rule][a][1] == 1 for a in ALPHAS)
    for m in (m1, m2):  # alpha 0.05 and 0.1 are the same count under both rules when Nv = 9
        assert all(m[rule][0.05] == m[rule][0.1] for rule in RULES)
    r = ns["readings"]
    right, kept = 0, 1
    rope, paper = r[2, "rope before", 0.05], r[2, "paper", 0.05]
    assert 1.4 <= rope[kept].mean() / paper[kept].mean() <= 1.6  # "1.5 times as often"
    assert interval(rope[kept] - paper[kept])[0] > 0 and interval(rope[right] - paper[right])[0] > 0  # beyond noise
    for a in (0.05, 0.2):  # the mask and the pooling: a few questions of a hundred, at the edge of the noise
        for rule in ("no causal mask", "max over questions"):
            d = r[2, rule, a][right] - r[2, "paper", a][right]
            assert -0.04 <= d.mean() <= 0 and interval(d)[0] < 0 and interval(d)[1] > -0.005
    d = r[2, "released", 0.2][right] - r[2, "paper", 0.2][right]  # within noise
    lo, hi = interval(d)
    assert lo < 0 < hi


def test_the_readings_are_the_saved_runs_cells(chapter):
    # each setting measured again one question at a time gives the cell that the command saved
    ns = chapter
    for (M, rule, a), (right, kept) in ns["readings"].items():
        assert (right.mean().item(), kept.mean().item()) == pytest.approx(ns["measured"][M][rule][a], abs=1e-12)


def test_the_table_is_the_measurement_of_each_rule(chapter):
    # the saved table, one cell that the readings do not use recomputed through the plain measurement
    ns = chapter
    model, samples = ns["model"], ns["samples"]
    assert ns["measured"][2]["rope before"][0.2] == measure(model, samples, Method(alpha=0.2, layer=2, rope="before"))


def test_the_saved_run_records_what_made_it():
    saved = json.loads((ROOT / "tutorial/runs/experiments_seed2024_n300.json").read_text())
    assert saved["command"].endswith("python -m minivtp experiments --json") and len(saved["commit"]) == 40
    res = saved["result"]
    assert set(res["variants"]) == {"1", "2"} and res["variant"] == "paper" and res["full"] == 1.0


def test_experiments_prints_the_variant_table_from_the_same_function(tmp_path):
    run = subprocess.run([sys.executable, "-m", "minivtp", "experiments", "--n", "4", "--seed", "3", "--json",
                          "--variant", "released", "--plot", str(tmp_path / "p.png")], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["variant"] == "released" and set(res["variants"]) == {"1", "2"}
    import torch
    g = torch.Generator().manual_seed(3)
    samples = [toy.make_sample(g) for _ in range(4)]
    model = toy.load()
    cell = res["variants"]["2"]["released"]["0.5"]
    assert tuple(cell) == measure(model, samples, Method(alpha=0.5, layer=2, variant="released"))
    # --variant released runs the grid's LLM-VTP under the released rule: a floor count of 0 at alpha 0.1
    assert res["kept"][f"llm-vtp a=0.1 M={toy.DEFAULT_LAYER}"] == 0
    text = table(res, model.llm.cfg.n_layers)  # what the command prints without --json
    assert "LLM-VTP at M 2: the paper's rule, the authors' released code's" in text
    assert "LLM-VTP, random and complement under the released rule" in text
    assert "| floor count |" in text and "int(9 * alpha) = 0 tokens of a frame at alpha 0.05, 0.1" in text
