"""LLM-VTP as its authors' released code runs it (Method(variant="released") and its four switches), each against
an independent float64 recomputation written from that code (tests/released64.py), on checkpoints transformers
wrote; and the paper's variant, the default, unchanged."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import prompt, write_llama
from oracle import forward64, pruned_masks, select64
from released64 import segments_topk, select_released64

import weights
from minivtp import vtp
from minivtp.generate import Method, generate
from minivtp.vtp import VideoSpan

PAPER = dict(rope="after", causal_mask=True, question_pool="mean", count="ceil")
RELEASED = dict(rope="before", causal_mask=False, question_pool="max", count="floor")
# every single switch from the paper's rule, and the whole released rule: (Method keywords, oracle keywords)
CASES = {
    "paper": (dict(variant="paper"), PAPER),
    "released": (dict(variant="released"), RELEASED),
    "rope": (dict(rope="before"), dict(PAPER, rope="before")),
    "causal": (dict(causal=False), dict(PAPER, causal_mask=False)),
    "question_pool": (dict(question_pool="max"), dict(PAPER, question_pool="max")),
    "count": (dict(count="floor"), dict(PAPER, count="floor")),
    "released but ceil": (dict(variant="released", count="ceil"), dict(RELEASED, count="ceil")),
}


@pytest.fixture(scope="module")
def mha(tmp_path_factory):  # Hkv = H, as in Vicuna-7B, the only shape the released scoring line runs on
    path = tmp_path_factory.mktemp("released_mha")
    hf = write_llama(path, seed=7, num_hidden_layers=4)
    return weights.load(path), hf


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    path = tmp_path_factory.mktemp("released_gqa")
    hf = write_llama(path, seed=8, num_hidden_layers=3, num_key_value_heads=2)
    return weights.load(path), hf


def check_against_float64(ckpt, method_kw, oracle_kw, start, T, Nv, Nq, alpha, layer, n_new=4, seed=0):
    """Our run against the float64 recomputation: the same S, the scores within float32 rounding, and the pruned
    generation's logits equal to a float64 pass with S's masks (nothing after the selection differs)."""
    model, hf = ckpt
    N = start + T * Nv + Nq
    tokens = prompt(seed, N)
    video = VideoSpan(start, T, Nv)
    sd, cfg = hf.state_dict(), hf.config
    S, a_v = select_released64(sd, cfg, tokens, start, T, Nv, alpha, layer, **oracle_kw)
    for scores in ("fast", "literal"):
        out = generate(model, model.embed(tokens)[None], n_new, video=video,
                       method=Method(alpha=alpha, layer=layer, scores=scores, **method_kw))
        assert out.kept.tolist() == S, scores
        # float32 softmax against float64: probabilities in [0, 1], off by a few float32 ulps of 1
        torch.testing.assert_close(out.pruning.scores.double(), a_v, rtol=1e-5, atol=1e-6)
        assert out.cache_len == start + len(S) + Nq
        seq = torch.cat([tokens, out.tokens[:-1]])
        masks = pruned_masks(N, len(seq), start, start + T * Nv, S, layer, cfg.num_hidden_layers)
        ref = forward64(sd, cfg, seq, masks)[N - 1 :]
        err = ((out.logits.double() - ref).abs().max() / ref.abs().max()).item()
        assert err <= 1e-4, err  # float32 over 4 layers against float64, as in test_vtp's oracle cases
    return out, S


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("layer", [1, 3])
def test_each_switch_equals_its_float64_recomputation(mha, case, layer):
    method_kw, oracle_kw = CASES[case]
    # Nv = 7, alpha = 0.3: ceil keeps 3 a frame, floor int(2.1) = 2, so the count switch shows
    out, S = check_against_float64(mha, method_kw, oracle_kw, start=3, T=4, Nv=7, Nq=5, alpha=0.3, layer=layer)
    assert len(S) == 4 * (2 if oracle_kw["count"] == "floor" else 3)


@pytest.mark.parametrize("case", ["released", "rope", "causal"])
def test_grouped_query_heads_repeat_for_the_released_scores(gqa, case):
    method_kw, oracle_kw = CASES[case]
    check_against_float64(gqa, method_kw, oracle_kw, start=2, T=3, Nv=8, Nq=4, alpha=0.5, layer=2, seed=3)


def test_the_switches_change_the_scores_and_the_kept_set(mha):
    # not a tautology: on this prompt each scoring switch alone moves a_v well past float32 rounding, and the
    # released rule and its RoPE switch alone keep another set than the paper's rule
    model, hf = mha
    tokens = prompt(1, 3 + 4 * 7 + 5)
    sd, cfg = hf.state_dict(), hf.config
    paper, a_paper = select_released64(sd, cfg, tokens, 3, 4, 7, 0.5, 2, **PAPER)
    for case in ("released", "rope", "causal", "question_pool"):
        other, a_other = select_released64(sd, cfg, tokens, 3, 4, 7, 0.5, 2, **CASES[case][1])
        assert (a_other - a_paper).abs().max() > 1e-3 * a_paper.abs().max(), case
        if case in ("released", "rope"):
            assert other != paper, case


def test_a_floor_count_of_zero_keeps_no_video_token_as_the_released_code(mha):
    # alpha * Nv = 0.7 < 1: int(0.7) = 0 tokens in every frame; the released loop's torch.topk(k=0) keeps none and
    # goes on with the prefix and the question rows only. So do we, and decode from that cache.
    out, S = check_against_float64(mha, dict(variant="released"), RELEASED, start=3, T=4, Nv=7, Nq=5, alpha=0.1,
                                   layer=2)
    assert S == [] and out.kept.numel() == 0 and out.cache_len == 3 + 5
    assert vtp.n_keep(0.1, 7, "floor") == 0 and vtp.n_keep(0.1, 7) == 1  # the paper's ceil keeps one


def test_the_floor_count_truncates_the_double_product():
    # int(static_size * alpha) in doubles: 0.29 * 100 = 28.999999999999996 keeps 28, ceil keeps 29
    assert 0.29 * 100 < 29
    assert vtp.n_keep(0.29, 100, "floor") == 28 and vtp.n_keep(0.29, 100) == 29
    assert [vtp.n_keep(a, 9, "floor") for a in (0.05, 0.1, 0.2, 0.5, 1.0)] == [0, 0, 1, 4, 9]
    assert [vtp.n_keep(a, 9) for a in (0.05, 0.1, 0.2, 0.5, 1.0)] == [1, 1, 2, 5, 9]


def test_per_frame_segments_are_one_window_of_t_frames():
    # PruneVid's segments: T windows of one frame, or one window of T frames, keep the same tokens (Eq. 5)
    a = torch.rand(5 * 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keep = lambda n: int(n * 0.5)  # noqa: E731
    assert sorted(segments_topk(a, [0] * 5, [6] * 5, [1] * 5, keep)) == sorted(segments_topk(a, [0], [30], [5], keep))
    ours = vtp.select_per_frame(a, VideoSpan(0, 5, 6), 0.5, count="floor").tolist()
    assert ours == sorted(segments_topk(a, [0] * 5, [6] * 5, [1] * 5, keep))


def test_the_paper_variant_is_todays_default(mha):
    # variant="paper", its four fields spelled out, and no field at all: the same run, bit for bit, and the same S
    # as the float64 reading of Eq. 4-6 that test_vtp checks the default against
    model, hf = mha
    tokens = prompt(2, 3 + 4 * 7 + 5)
    embeds, video = model.embed(tokens)[None], VideoSpan(3, 4, 7)
    default = generate(model, embeds, 5, video=video, alpha=0.3, layer=2)
    for method in (Method(alpha=0.3, layer=2, variant="paper"),
                   Method(alpha=0.3, layer=2, rope="after", causal=True, question_pool="mean", count="ceil")):
        out = generate(model, embeds, 5, video=video, method=method)
        assert out.kept.tolist() == default.kept.tolist()
        torch.testing.assert_close(out.logits, default.logits, rtol=0, atol=0)
    S, _ = select64(hf.state_dict(), hf.config, tokens, 3, 4, 7, 0.3, 2)
    assert default.kept.tolist() == S


def test_released_resolves_to_its_four_switches_and_one_field_overrides():
    m = Method(alpha=0.2, layer=2, variant="released").resolved(4)
    assert (m.rope, m.causal, m.question_pool, m.count) == ("before", False, "max", "floor")
    m = Method(alpha=0.2, layer=2, variant="released", causal=True).resolved(4)
    assert (m.rope, m.causal, m.question_pool, m.count) == ("before", True, "max", "floor")
    m = Method(alpha=0.2, layer=2).resolved(4)
    assert (m.variant, m.rope, m.causal, m.question_pool, m.count) == ("paper", "after", True, "mean", "ceil")


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="authors"), r"variant='authors' must be one of 'paper', 'released'"),
    (dict(rope="middle"), r"rope='middle' must be one of 'after', 'before'"),
    (dict(causal="no"), r"causal='no' must be one of True, False"),
    (dict(question_pool="min"), r"question_pool='min' must be one of 'mean', 'max'"),
    (dict(count="round"), r"count='round' must be one of 'ceil', 'floor'"),
    (dict(name="fastv", variant="released"), r"method='fastv' must be one of 'llm-vtp', 'random', 'complement'"),
])
def test_bad_variant_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Method(alpha=0.2, layer=2, **kwargs).resolved(4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the released rule on CUDA is checked there")
def test_the_released_rule_on_cuda_keeps_what_the_cpu_keeps(mha):
    model, _ = mha
    tokens = prompt(4, 3 + 4 * 7 + 5)
    video = VideoSpan(3, 4, 7)
    cpu = generate(model, model.embed(tokens)[None], 4, video=video, method=Method(alpha=0.5, layer=2,
                                                                                  variant="released"))
    gpu_model = model.to("cuda")
    try:
        from minivtp.fast import FastDecoder
        for decoder in (None, FastDecoder(gpu_model)):  # the readable loop, and the fast path's graphs
            gpu = generate(gpu_model, gpu_model.embed(tokens.cuda())[None], 4, video=video, decoder=decoder,
                           method=Method(alpha=0.5, layer=2, variant="released"))
            assert gpu.kept.cpu().tolist() == cpu.kept.tolist()
            torch.testing.assert_close(gpu.pruning.scores.cpu(), cpu.pruning.scores, rtol=1e-4, atol=1e-6)
    finally:
        model.to("cpu")



# ---- the command line: --variant on answer and eval -----------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def minivtp_cli(*args):
    return subprocess.run([sys.executable, "-m", "minivtp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_answer_with_the_released_variant_says_when_a_frame_keeps_nothing(llava, tmp_path):
    from safetensors.torch import save_file
    _, pllava, _ = llava
    frames = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0))}, frames)
    common = ["answer", "--weights", pllava, "--video", frames, "--question", "What is the man doing?", "--layer", 2,
              "--max-new-tokens", 3, "--device", "cpu", "--dtype", "float32", "--json"]
    # 2 pooled frames of 2 x 2 tokens: int(4 * 0.5) = 2 a frame, as ceil
    half = minivtp_cli(*common, "--alpha", 0.5, "--variant", "released")
    assert half.returncode == 0, half.stderr
    d = json.loads(half.stdout)
    assert d["variant"] == "released" and d["kept_video_tokens"] == 4 and "note" not in d
    # int(4 * 0.1) = 0: nothing of the video is kept, and the run says so on stderr and in its JSON
    zero = minivtp_cli(*common, "--alpha", 0.1, "--variant", "released")
    assert zero.returncode == 0, zero.stderr
    d = json.loads(zero.stdout)
    assert d["kept_video_tokens"] == 0 and d["kept_ratio"] == 0 and d["cache_rows"] == d["prompt_rows"] - 8
    assert "int(4 * 0.1) = 0 tokens of each frame" in d["note"] and d["note"] in zero.stderr
    from minivtp.cli import zero_count_note
    span = VideoSpan(5, 2, 4)
    assert zero_count_note(Method(alpha=0.1, layer=2), span) is None  # the paper's ceil(0.4) = 1: nothing to say
    assert zero_count_note(Method(alpha=0.1, layer=2, count="floor"), span) == d["note"]
    # ranked over the whole video: int(8 * 0.1) = 0 of its 8 tokens, int(8 * 0.2) = 1
    assert "int(8 * 0.1) = 0 tokens of the video" in zero_count_note(Method(alpha=0.1, layer=2, variant="released",
                                                                            ranking="sequence"), span)
    assert zero_count_note(Method(alpha=0.2, layer=2, variant="released", ranking="sequence"), span) is None
    bad = minivtp_cli(*common, "--alpha", 0.5, "--variant", "released", "--method", "fastv")
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "method='fastv' has its own rule" in errors[0]


def test_eval_with_the_released_variant_answers_as_generate_does(tmp_path):
    from minivtp.lab import toy
    bench = tmp_path / "bench"
    toy.export_mvbench(bench, n=12, seed=99)
    model = toy.load()
    g = torch.Generator().manual_seed(99)
    samples = [toy.make_sample(g) for _ in range(12)]  # export_mvbench draws the same videos first
    for alpha in (0.5, 0.1):
        out = tmp_path / f"r{alpha}.jsonl"
        run = minivtp_cli("eval", "--weights", toy.ASSETS, "--questions", bench / "questions.json", "--videos",
                          bench / "videos", "--out", out, "--alpha", alpha, "--layer", toy.DEFAULT_LAYER,
                          "--variant", "released", "--json")
        assert run.returncode == 0, run.stderr
        method = Method(alpha=alpha, layer=toy.DEFAULT_LAYER, variant="released")
        want = [toy.is_right(s, toy.ask(model, s, method=method)[0]) for s in samples]
        assert [json.loads(line)["correct"] for line in out.read_text().splitlines()] == want
        summary = json.loads(run.stdout)
        assert summary["mean_kept_ratio"] == pytest.approx(toy.T * int(toy.NV * alpha) / (toy.T * toy.NV))
        assert (run.stderr.count("note: the released count keeps int(9 * 0.1) = 0") == 1) == (alpha == 0.1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks --tiny on the CPU; a GPU runs it in bfloat16")
def test_the_prefill_bench_runs_at_a_tiny_shape(tmp_path):
    # `python -m bench.floors --parts released` is the GPU measurement; here only that it runs and keeps what each
    # rule keeps
    from bench import common, floors
    assert floors.main(["--tiny", "--parts", "released", "--reps", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "floors.json").read_text())["released"]
    T, Nv = common.shape(tiny=True).frames, common.shape(tiny=True).nv
    for alpha, M in floors.RELEASED_SETTINGS:
        runs = {rule: res["runs"][f"a{alpha} M{M} {rule}"] for rule in floors.RELEASED_RULES}
        assert runs["paper"]["kept"] == T * vtp.n_keep(alpha, Nv) == runs["released, ceil count"]["kept"]
        assert runs["released"]["kept"] == T * int(Nv * alpha)
        assert all(r["prefill_ms"] > 0 and min(r["scoring_ms"].values()) > 0 for r in runs.values())


def test_the_module_docstring_examples_run():
    # vtp.py's worked examples, the released count's empty frame among them, printed as they are
    import doctest
    result = doctest.testmod(vtp, extraglobs={"torch": torch})
    assert result.attempted >= 3 and result.failed == 0
