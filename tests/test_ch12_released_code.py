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


def test_chapter_runs_and_prints_what_it_shows(chapter):
    ns = chapter
    m1, m2 = ns["measured"][1], ns["measured"][2]
    assert set(m1) == set(RULES) and all(set(row) == set(ALPHAS) for row in m1.values())
    # what the chapter's words claim, beyond its printed numbers
    for rule in ("released", "floor count"):  # int(9 * alpha) = 0: no video, the named patch never kept
        assert all(m[rule][a][1] == 0 for m in (m1, m2) for a in (0.05, 0.1))
        assert all(m[rule][a][0] < 0.4 for m in (m1, m2) for a in (0.05, 0.1))
    for rule in ("paper", "rope before", "no causal mask", "max over questions"):  # clean attention at M = 1
        assert all(m1[rule][a] == (1.0, 1.0) for a in ALPHAS)
    for rule in ("no causal mask", "max over questions"):  # a few questions either way at M = 2
        assert all(abs(m2[rule][a][0] - m2["paper"][a][0]) <= 3 / 90 + 1e-9 for a in ALPHAS)
    assert m2["rope before"][0.05][1] >= 1.8 * m2["paper"][0.05][1]  # about twice as often
    assert m2["released"][0.2][0] - m2["paper"][0.2][0] >= 0.15  # above the paper's rule with half the tokens
    for m in (m1, m2):  # alpha 0.05 and 0.1 are the same count under both rules when Nv = 9
        assert all(m[rule][0.05] == m[rule][0.1] for rule in RULES)


def test_the_table_is_the_measurement_of_each_rule(chapter):
    # the chapter's table, one cell recomputed through the plain measurement with the Method it names
    ns = chapter
    model, samples = ns["model"], ns["samples"]
    assert ns["measured"][2]["rope before"][0.2] == measure(model, samples, Method(alpha=0.2, layer=2, rope="before"))


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
