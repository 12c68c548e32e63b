"""The toy video QA task, the shipped toy checkpoint, and the demo."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import weights
from minivtp import png, toy

ROOT = Path(__file__).resolve().parents[1]


def read_answer(sample):
    """Answer the question from the patch features alone, the way the task defines it (not from .objects)."""
    f = sample.features.reshape(toy.T, toy.ROWS, toy.COLS, toy.P)
    ns, nc = len(toy.SHAPES), len(toy.COLOURS)
    kind, _, word = sample.question
    channel = toy.SHAPES.index(word) if kind in ("colour", "frame") else ns + toy.COLOURS.index(word)
    hits = (f[..., channel] == 1.0).nonzero().tolist()
    assert len(hits) == 1  # every shape and colour is drawn exactly once; clutter never reaches 1.0
    t, r, c = hits[0]
    if kind == "colour":
        return toy.COLOURS[int(f[t, r, c, ns : ns + nc].argmax())]
    if kind == "shape":
        return toy.SHAPES[int(f[t, r, c, :ns].argmax())]
    assert int(f[t, r, c, ns + nc : ns + nc + toy.T].argmax()) == t  # the frame stamp agrees with the layout
    return str(t)


def test_answers_are_determined_by_the_video():
    g = torch.Generator().manual_seed(0)
    for kind in toy.KINDS:
        for _ in range(200):
            s = toy.make_sample(g, kind)
            assert s.features.shape == (toy.T, toy.NV, toy.P)
            assert read_answer(s) == s.answer


def test_questions_alone_do_not_tell_the_answer():
    # for one fixed question text, the answers spread over all values: the video is needed
    g = torch.Generator().manual_seed(1)
    for kind, word, n_values in (("colour", "circle", 4), ("frame", "circle", 8), ("shape", "red", 4)):
        answers = Counter()
        while sum(answers.values()) < 600:
            s = toy.make_sample(g, kind)
            if s.question[-1] == word:
                answers[s.answer] += 1
        assert len(answers) == n_values
        assert max(answers.values()) / 600 < 2.0 / n_values  # no answer is much likelier than the rest


def test_vocabulary_and_prompt_layout():
    model = toy.ToyVideoLLM()
    s = toy.make_sample(torch.Generator().manual_seed(2), "colour")
    embeds, video = model.prompt(s.features[None], [s.question])
    assert video.start == 2 and video.end == 2 + toy.T * toy.NV
    assert embeds.shape == (1, video.end + len(s.question), model.llm.cfg.dim)
    torch.testing.assert_close(embeds[0, 0], model.llm.embed.weight[toy.ID["<s>"]])


@pytest.fixture(scope="module")
def shipped():
    return toy.load()


def test_shipped_checkpoint_beats_chance_by_far(shipped):
    for kind in toy.KINDS:
        acc = toy.accuracy(shipped, n=60, seed=99, kind=kind)
        assert acc >= 0.8 and acc > 3 * toy.chance(kind), (kind, acc)


def test_llm_vtp_keeps_the_answer_patch_where_random_and_complement_lose_it(shipped):
    from minivtp.demo import DEFAULT_LAYER
    from minivtp.experiments import measure
    g = torch.Generator().manual_seed(7)
    samples = [toy.make_sample(g) for _ in range(120)]
    full, _ = measure(shipped, samples)
    vtp = measure(shipped, samples, alpha=0.1, layer=DEFAULT_LAYER)
    rand = measure(shipped, samples, alpha=0.1, layer=DEFAULT_LAYER, selection="random")
    comp = measure(shipped, samples, alpha=0.1, layer=DEFAULT_LAYER, selection="complement")
    # the question's attention at layer 1 finds the one patch that answers it; 1 kept token in 9 at random does not
    assert vtp[1] >= 0.7 and rand[1] <= 0.3 and comp[1] <= 0.3
    assert vtp[0] >= full - 0.05  # and nothing is lost by pruning the rest (README: why random loses nothing here)


def test_toy_checkpoint_is_refused_by_the_plain_loader_with_a_clear_error():
    with pytest.raises(ValueError, match="model_type 'minivtp-toy' is not a LLaMA decoder"):
        weights.load(toy.ASSETS)


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo.png"
    run = subprocess.run([sys.executable, "-m", "minivtp.demo", "--out", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "all 72 video tokens:" in run.stdout and "LLM-VTP alpha=0.1" in run.stdout
    assert "kept 8 of 72 video tokens" in run.stdout  # ceil(0.1 * 9) = 1 per frame
    W, H = png.read_png_size(out)
    assert (W, H) > (400, 100)


def test_png_writer_roundtrip(tmp_path):
    zlib = pytest.importorskip("zlib")
    img = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    png.write_png(tmp_path / "x.png", img)
    data = (tmp_path / "x.png").read_bytes()
    assert png.read_png_size(tmp_path / "x.png") == (7, 5)
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    rows = torch.tensor(list(raw), dtype=torch.uint8).view(5, 1 + 7 * 3)
    assert (rows[:, 0] == 0).all() and torch.equal(rows[:, 1:].reshape(5, 7, 3), img)
