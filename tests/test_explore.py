"""The explorer page: its data against minivtp's own functions, its JavaScript against the same functions (under
node), and the page itself in a real headless browser (Chromium), each skipped with a reason when the tool is
missing."""

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minivtp import vtp
from minivtp.rivals import FastV, fastv
from minivtp.lab import explore, toy
from minivtp.flops import prefill_flops
from minivtp.generate import Method, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "explore.html"
    run = subprocess.run([sys.executable, "-m", "minivtp", "explore", "--out", str(out), "--seed", "77"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    data = json.loads(re.search(r"const data = (\{.*?\});\n", html, re.S).group(1).replace("<\\/", "</"))
    return out, html, data


def test_the_page_is_self_contained(page):
    _, html, data = page
    assert "http://" not in html and "https://" not in html and "<link" not in html  # nothing fetched
    assert len(data["frames"]) == toy.T
    for b64 in data["frames"]:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_equal_what_generate_decides_on(page):
    _, _, data = page
    model = toy.load()
    sample = toy.make_sample(torch.Generator().manual_seed(77))
    embeds, video = model.prompt(sample.features[None], [sample.question])
    for M in range(1, model.llm.cfg.n_layers + 1):
        for pool in ("max", "mean", "min"):
            ref = generate(model.llm, embeds, 1, video=video, alpha=1.0, layer=M, head_pool=pool).pruning.scores
            torch.testing.assert_close(torch.tensor(data["scores"][pool][M - 1]), ref, rtol=1e-5, atol=1e-7)
        last = generate(model.llm, embeds, 1, video=video, method=FastV(alpha=1.0, layer=M)).pruning.scores
        torch.testing.assert_close(torch.tensor(data["scores"]["last"][M - 1]), last, rtol=1e-5, atol=1e-7)


def test_precomputed_answers_are_the_models(page):
    _, _, data = page
    model = toy.load()
    sample = toy.make_sample(torch.Generator().manual_seed(77))
    assert data["full_answer"] == " ".join(toy.ask(model, sample)[0])
    for key in ("llm-vtp|1|0.1|max|frame", "llm-vtp|3|0.35|min|sequence", "fastv|2|0.2"):
        parts = key.split("|")
        if parts[0] == "fastv":
            method = FastV(alpha=float(parts[2]), layer=int(parts[1]))
        else:
            method = Method(alpha=float(parts[2]), layer=int(parts[1]), head_pool=parts[3], ranking=parts[4])
        words = toy.ask(model, sample, method=method)[0]
        assert data["answers"][key] == " ".join(words)
        assert data["right"][data["answers"][key]] == toy.is_right(sample, words)


def slider_positions(data):
    for rule in ("llm-vtp", "fastv"):
        for M in range(1, len(data["scores"]["max"]) + 1):
            for alpha in explore.ALPHAS:
                for pool in (("max", "mean", "min") if rule == "llm-vtp" else ("max",)):
                    for ranking in (("frame", "sequence") if rule == "llm-vtp" else ("frame",)):
                        yield dict(rule=rule, M=M, alpha=alpha, pool=pool, ranking=ranking)


def python_kept(data, s):
    video = vtp.VideoSpan(0, data["T"], data["Nv"])
    if s["rule"] == "fastv":
        return fastv.fastv_select(torch.tensor(data["scores"]["last"][s["M"] - 1]), video, s["alpha"]).tolist()
    a = torch.tensor(data["scores"][s["pool"]][s["M"] - 1])
    select = vtp.select_per_frame if s["ranking"] == "frame" else vtp.select_whole_sequence
    return select(a, video, s["alpha"]).tolist()


def test_the_pages_javascript_equals_python_at_every_slider_position(page, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's arithmetic is checked in the browser test only")
    _, html, data = page
    logic = re.search(r'<script id="logic">(.*?)</script>', html, re.S).group(1)
    (tmp_path / "logic.js").write_text(logic)
    positions = list(slider_positions(data))
    (tmp_path / "data.json").write_text(json.dumps(dict(data=data, positions=positions)))
    script = """
const L = require(process.argv[2]); const fs = require("fs");
const {data, positions} = JSON.parse(fs.readFileSync(process.argv[3]));
const out = positions.map(s => { const kept = L.keptSet(data, s);
  return {kept, flops: L.prefillFlops(data.cfg, data.prefix, data.T, data.Nv, data.Nq, kept.length, s.M, s.rule)}; });
console.log(JSON.stringify(out));
"""
    (tmp_path / "run.js").write_text(script)
    run = subprocess.run([node, str(tmp_path / "run.js"), str(tmp_path / "logic.js"), str(tmp_path / "data.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    cfg = toy.load().llm.cfg
    assert len(results) == len(positions) == 2 * 4 * len(explore.ALPHAS) * 3 + 4 * len(explore.ALPHAS)
    for s, got in zip(positions, results):
        assert got["kept"] == python_kept(data, s), s
        if s["rule"] == "fastv" or s["ranking"] == "frame":  # the FLOPs formula of minivtp.flops, same numbers
            f = prefill_flops(cfg, data["prefix"], data["T"], data["Nv"], data["Nq"], alpha=s["alpha"], layer=s["M"],
                              method="fastv" if s["rule"] == "fastv" else "llm-vtp")
            assert (got["flops"]["full"], got["flops"]["pruned"]) == (f["flops_full"], f["flops_pruned"]), s


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium here (apt-get install chromium): the page was not opened in a browser")


def test_the_page_in_a_headless_browser(page, tmp_path):
    browser = chromium()
    path, _, data = page
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files"]
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1300,900", path.as_uri()],
                   capture_output=True, timeout=120)
    Image = pytest.importorskip("PIL.Image")
    img = Image.open(shot).convert("RGB")
    assert img.size == (1300, 900) and len(img.getcolors(1 << 20)) > 50  # text, frames, heat: far from blank
    # the controls moved through their own input events (the address's #...), then the kept count read back
    for s in ({"rule": "llm-vtp", "M": 2, "alpha": 0.3, "pool": "mean", "ranking": "frame"},
              {"rule": "fastv", "M": 3, "alpha": 0.15, "pool": "max", "ranking": "frame"},
              {"rule": "llm-vtp", "M": 4, "alpha": 0.05, "pool": "min", "ranking": "sequence"}):
        url = path.as_uri() + "#" + "&".join(f"{k}={v}" for k, v in s.items())
        dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        shown = re.search(r'<div id="kept">(\d+) of (\d+)', dom)
        assert shown, dom[-2000:]
        assert int(shown.group(1)) == len(python_kept(data, s)) and int(shown.group(2)) == data["T"] * data["Nv"]


def test_the_page_for_a_video_llm_checkpoint(llava, tmp_path):
    from safetensors.torch import save_file
    frames = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (6, 32, 40, 3), dtype=torch.uint8)}, frames)
    out = tmp_path / "p.html"
    run = subprocess.run([sys.executable, "-m", "minivtp", "explore", "--weights", str(llava[1]), "--video", str(frames),
                          "--question", "What is it?", "--device", "cpu", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    data = json.loads(re.search(r"const data = (\{.*?\});\n", out.read_text(), re.S).group(1).replace("<\\/", "</"))
    assert data["T"] == 2 and data["Nv"] == 4 and data["grid"] == [2, 2] and len(data["frames"]) == 2
    assert len(data["scores"]["max"]) == 3 and len(data["scores"]["max"][0]) == 8
    bad = subprocess.run([sys.executable, "-m", "minivtp", "explore", "--weights", str(llava[1]), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --weights needs --video and --question"


# ---- the released code's kept set beside the paper's (the "compare" control) -----------------------------------


def test_released_scores_and_answers_are_what_generate_decides_on(page):
    _, _, data = page
    model = toy.load()
    sample = toy.make_sample(torch.Generator().manual_seed(77))
    embeds, video = model.prompt(sample.features[None], [sample.question])
    for M in range(1, model.llm.cfg.n_layers + 1):
        ref = generate(model.llm, embeds, 1, video=video, method=Method(alpha=1.0, layer=M, variant="released"))
        torch.testing.assert_close(torch.tensor(data["scores"]["released"][M - 1]), ref.pruning.scores, rtol=1e-5,
                                   atol=1e-7)
    for M, a in ((1, 0.1), (2, 0.3), (4, 1.0)):
        words = toy.ask(model, sample, method=Method(alpha=a, layer=M, variant="released"))[0]
        assert data["answers"][f"released|{M}|{a}"] == " ".join(words)


def test_the_pages_released_kept_set_equals_python_at_every_slider_position(page, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's arithmetic is checked in the browser test only")
    _, html, data = page
    (tmp_path / "logic.js").write_text(re.search(r'<script id="logic">(.*?)</script>', html, re.S).group(1))
    positions = [dict(rule="released", M=M, alpha=a) for M in range(1, len(data["scores"]["released"]) + 1)
                 for a in explore.ALPHAS]
    (tmp_path / "data.json").write_text(json.dumps(dict(data=data, positions=positions)))
    (tmp_path / "run.js").write_text("""
const L = require(process.argv[2]); const fs = require("fs");
const {data, positions} = JSON.parse(fs.readFileSync(process.argv[3]));
console.log(JSON.stringify(positions.map(s => L.keptSet(data, s))));
""")
    run = subprocess.run([node, str(tmp_path / "run.js"), str(tmp_path / "logic.js"), str(tmp_path / "data.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    video = vtp.VideoSpan(0, data["T"], data["Nv"])
    empty = 0
    for s, got in zip(positions, json.loads(run.stdout)):
        a = torch.tensor(data["scores"]["released"][s["M"] - 1])
        assert got == vtp.select_per_frame(a, video, s["alpha"], count="floor").tolist(), s
        empty += got == []
    assert empty == 4 * 2  # int(9 * 0.05) = int(9 * 0.1) = 0: no token kept, at every M


def test_the_compare_control_in_a_headless_browser(page):
    browser = chromium()
    path, _, data = page
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    for alpha, per_frame in ((0.3, 2), (0.1, 0)):
        url = path.as_uri() + f"#M=2&alpha={alpha}&compare=released"
        dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        shown = re.search(r'<div id="released"[^>]*>((\d+) of (\d+) \((\d+) a frame[^<]*)</div>', dom)
        assert shown, dom[-2000:]
        assert (int(shown.group(2)), int(shown.group(4))) == (data["T"] * per_frame, per_frame)
        assert ("no video token is left" in shown.group(1)) == (per_frame == 0)
