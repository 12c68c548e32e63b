"""LLM-VTP, equation by equation, then end to end against an independent float64 oracle (tests/oracle.py)."""

import math

import pytest
import torch
from conftest import prompt, write_llama
from oracle import forward64, pruned_masks, select64

import weights
from minivtp import vtp
from minivtp.generate import generate
from minivtp.model import KVCache
from minivtp.vtp import VideoSpan

# ---- one test per equation -----------------------------------------------------------------------------------

SPAN = VideoSpan(start=2, frames=3, tokens_per_frame=4)  # prompt: 2 prefix rows, 12 video rows, then questions
N = 17  # 3 question rows: 14, 15, 16


def test_videospan_rows():
    assert SPAN.end == 14
    SPAN.check(N)
    SPAN.check(N, video_rows=12)


def test_head_pooling_max_mean_min():
    A = torch.rand(5, N, N)
    for how, ref in (("max", A.max(0).values), ("mean", A.sum(0) / 5), ("min", A.min(0).values)):
        pooled = vtp.pool_heads(A, how)
        assert pooled.shape == (N, N)
        torch.testing.assert_close(pooled, ref)


def test_eq4_is_the_question_by_video_block():
    A = torch.arange(N * N, dtype=torch.float32).view(N, N)  # A[i, j] = i * N + j: every entry says where it is
    A_qv = vtp.question_to_video(A, SPAN)
    assert A_qv.shape == (3, 12)  # (Nq, T*Nv)
    rows, cols = (A_qv // N).long(), (A_qv % N).long()
    assert rows[:, 0].tolist() == [14, 15, 16] and cols[0].tolist() == list(range(2, 14))


def test_video_scores_average_over_question_rows():
    A_qv = torch.rand(3, 12)
    a_v = vtp.video_scores(A_qv)
    assert a_v.shape == (12,)
    torch.testing.assert_close(a_v, (A_qv[0] + A_qv[1] + A_qv[2]) / 3)


@pytest.mark.parametrize("alpha,Nv,k", [(0.25, 10, 3), (0.3, 10, 3), (0.1, 144, 15), (0.2, 144, 29),
                                        (0.001, 10, 1), (1.0, 7, 7), (0.5, 7, 4), (0.55, 100, 55), (0.28, 25, 7),
                                        (0.07, 100, 7)])
def test_eq5_keeps_ceil_alpha_nv(alpha, Nv, k):
    assert vtp.n_keep(alpha, Nv) == k
    # the paper's ceiling, checked with exact fractions (0.55 * 100 is 55, whatever floating point says)
    from fractions import Fraction
    assert k == max(1, math.ceil(Fraction(str(alpha)) * Nv))


def test_eq5_eq6_top_k_within_each_frame_never_across():
    torch.manual_seed(0)
    video = VideoSpan(start=5, frames=6, tokens_per_frame=9)
    a_v = torch.rand(54)
    a_v[:9] += 10  # frame 0 outranks everything: a whole-video ranking would take only it
    S = vtp.select_per_frame(a_v, video, alpha=0.3)  # ceil(2.7) = 3 per frame
    assert S.shape == (18,) and S.tolist() == sorted(S.tolist())  # Eq. 6: sorted global positions
    for t in range(6):
        lo = video.start + t * 9
        in_frame = [s for s in S.tolist() if lo <= s < lo + 9]
        assert len(in_frame) == 3
        frame_scores = a_v[t * 9 : t * 9 + 9].tolist()
        best = sorted(range(9), key=lambda j: -frame_scores[j])[:3]
        assert sorted(s - lo for s in in_frame) == sorted(best)


def test_whole_sequence_ranking_can_favour_one_frame():
    video = VideoSpan(start=0, frames=3, tokens_per_frame=4)
    a_v = torch.tensor([9., 8, 7, 6, 1, 2, 3, 4, 0.5, 0.1, 0.2, 0.3])
    S = vtp.select_whole_sequence(a_v, video, alpha=0.25)  # ceil(0.25 * 12) = 3 overall
    assert S.tolist() == [0, 1, 2]
    assert vtp.select_per_frame(a_v, video, alpha=0.25).tolist() == [0, 7, 8]


def test_random_baseline_same_count_per_frame_and_complement():
    video = VideoSpan(start=1, frames=4, tokens_per_frame=10)
    g = torch.Generator().manual_seed(3)
    S = vtp.select_random(video, 0.2, g)
    assert S.numel() == 8
    assert [((S - 1) // 10 == t).sum().item() for t in range(4)] == [2, 2, 2, 2]
    C = vtp.complement(S, video)
    assert C.numel() == 32 and set(S.tolist()).isdisjoint(C.tolist())
    assert sorted(S.tolist() + C.tolist()) == list(range(1, 41))


def test_rows_to_keep_prefix_kept_video_questions():
    S = torch.tensor([3, 8, 12])
    assert vtp.rows_to_keep(N, SPAN, S).tolist() == [0, 1, 3, 8, 12, 14, 15, 16]


def test_eq7_eq8_row_selection_of_k_and_v():
    caches = [KVCache(1, 2, N + 4, 8) for _ in range(3)]
    ks = [torch.randn(1, 2, N, 8) for _ in caches]
    vs = [torch.randn(1, 2, N, 8) for _ in caches]
    for c, k, v in zip(caches, ks, vs):
        c.append(k, v, torch.arange(N))
    rows = vtp.rows_to_keep(N, SPAN, torch.tensor([3, 8, 12]))
    vtp.compress_caches(caches, rows)
    for c, k, v in zip(caches, ks, vs):
        # Eq. 7: K~_v = K_v[S, :];  Eq. 8: K~ = [K~_v; K_q] (with the prefix rows in front)
        assert c.length == 8
        torch.testing.assert_close(c.k[:, :, :8], torch.cat([k[:, :, :2], k[:, :, [3, 8, 12]], k[:, :, 14:]], 2))
        torch.testing.assert_close(c.v[:, :, :8], torch.cat([v[:, :, :2], v[:, :, [3, 8, 12]], v[:, :, 14:]], 2))


# ---- end to end on a checkpoint transformers wrote ------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vtp_llama")
    hf = write_llama(path, seed=5, num_hidden_layers=4, num_key_value_heads=2)
    return weights.load(path), hf


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_alpha_one_is_the_unpruned_model(ckpt, layer):
    model, _ = ckpt
    tokens = prompt(0, 40)
    embeds = model.embed(tokens)[None]
    video = VideoSpan(start=4, frames=4, tokens_per_frame=7)
    plain = generate(model, embeds, 8)
    full = generate(model, embeds, 8, video=video, alpha=1.0, layer=layer)
    assert full.tokens.tolist() == plain.tokens.tolist()
    assert full.kept.tolist() == list(range(4, 32)) and full.cache_len == 40
    # float32 both ways; pruning nothing must change nothing beyond rounding in the kernels
    assert ((full.logits - plain.logits).abs().max() / plain.logits.abs().max()) <= 1e-5


def oracle_case(model, hf, start, T, Nv, Nq, alpha, layer, n_new, pool="max", seed=0):
    N = start + T * Nv + Nq
    tokens = prompt(seed, N)
    video = VideoSpan(start, T, Nv)
    out = generate(model, model.embed(tokens)[None], n_new, video=video, alpha=alpha, layer=layer, head_pool=pool)
    sd, cfg = hf.state_dict(), hf.config
    S, _ = select64(sd, cfg, tokens, start, T, Nv, alpha, layer, pool)
    assert out.kept.tolist() == S
    assert out.cache_len == start + len(S) + Nq
    # one float64 pass over prompt + the generated tokens (all but the last, whose successor we never asked for)
    seq = torch.cat([tokens, out.tokens[:-1]])
    masks = pruned_masks(N, len(seq), start, start + T * Nv, S, layer, cfg.num_hidden_layers)
    ref = forward64(sd, cfg, seq, masks)[N - 1 :]  # the rows whose logits chose each generated token
    assert ref.shape == out.logits.shape
    err = ((out.logits.double() - ref).abs().max() / ref.abs().max()).item()
    # float32 against float64 over 4 layers: ~1e-6 in practice; 1e-4 leaves room for kernel reassociation
    assert err <= 1e-4, err
    return out


@pytest.mark.parametrize("layer", [1, 2, 4])
def test_pruned_generation_equals_masked_float64_oracle(ckpt, layer):
    model, hf = ckpt
    out = oracle_case(model, hf, start=0, T=4, Nv=8, Nq=6, alpha=0.25, layer=layer, n_new=6)
    assert out.kept.numel() == 8


def test_oracle_with_system_prefix_and_ceil(ckpt):
    model, hf = ckpt
    # 5 prefix rows, Nv=9 and alpha=0.3: ceil(2.7) = 3 per frame
    out = oracle_case(model, hf, start=5, T=3, Nv=9, Nq=4, alpha=0.3, layer=2, n_new=5, seed=1)
    assert out.kept.numel() == 9 and out.kept.min() >= 5


def test_oracle_tiny_alpha_mean_pool(ckpt):
    model, hf = ckpt
    out = oracle_case(model, hf, start=3, T=5, Nv=6, Nq=5, alpha=0.01, layer=3, n_new=4, pool="mean", seed=2)
    assert out.kept.numel() == 5  # one per frame


def test_literal_and_fast_scores_agree(ckpt):
    model, _ = ckpt
    tokens = prompt(4, 50)
    embeds = model.embed(tokens)[None]
    video = VideoSpan(start=6, frames=5, tokens_per_frame=7)
    for pool in ("max", "mean", "min"):
        fast = generate(model, embeds, 5, video=video, alpha=0.3, layer=2, head_pool=pool, scores="fast")
        literal = generate(model, embeds, 5, video=video, alpha=0.3, layer=2, head_pool=pool, scores="literal")
        assert fast.kept.tolist() == literal.kept.tolist()
        torch.testing.assert_close(fast.pruning.scores, literal.pruning.scores, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fast.logits, literal.logits, rtol=1e-6, atol=1e-6)


def test_manual_attention_path_gives_the_same_generation(ckpt):
    model, _ = ckpt
    embeds = model.embed(prompt(5, 40))[None]
    video = VideoSpan(start=2, frames=4, tokens_per_frame=8)
    a = generate(model, embeds, 6, video=video, alpha=0.2, layer=3)
    for layer in model.layers:
        layer.attn.fused = False  # the written-out math in every layer
    b = generate(model, embeds, 6, video=video, alpha=0.2, layer=3)
    assert a.tokens.tolist() == b.tokens.tolist()
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)


def test_baselines_keep_what_they_should(ckpt):
    model, _ = ckpt
    embeds = model.embed(prompt(6, 40))[None]
    video = VideoSpan(start=2, frames=4, tokens_per_frame=8)
    ours = generate(model, embeds, 3, video=video, alpha=0.25, layer=2)
    rand = generate(model, embeds, 3, video=video, alpha=0.25, layer=2, method="random", seed=1)
    comp = generate(model, embeds, 3, video=video, alpha=0.25, layer=2, method="complement")
    seq = generate(model, embeds, 3, video=video, alpha=0.25, layer=2, ranking="sequence")
    assert rand.kept.numel() == ours.kept.numel() == seq.kept.numel() == 8
    assert sorted(ours.kept.tolist() + comp.kept.tolist()) == list(range(2, 34))
    assert comp.cache_len == 40 - 8


def test_sampling_is_seeded(ckpt):
    model, _ = ckpt
    embeds = model.embed(prompt(7, 20))[None]
    a = generate(model, embeds, 6, temperature=1.0, seed=3)
    b = generate(model, embeds, 6, temperature=1.0, seed=3)
    assert a.tokens.tolist() == b.tokens.tolist()


# ---- bad arguments: ValueError naming the value and its range --------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=0.0), r"alpha=0.0 is outside \(0, 1\]"),
    (dict(alpha=1.5), r"alpha=1.5 is outside \(0, 1\]"),
    (dict(layer=0), r"layer=0 is outside 1..4"),
    (dict(layer=5), r"layer=5 is outside 1..4"),
    (dict(video=VideoSpan(10, 3, 8)), r"run past the prompt \(prompt rows 0..29\)"),
    (dict(video=VideoSpan(6, 3, 8)), r"no question rows after the video"),
    (dict(head_pool="median"), r"head_pool='median' must be one of"),
    (dict(max_new_tokens=300), r"exceeds the model's 256 positions"),
])
def test_bad_arguments(ckpt, kwargs, match):
    model, _ = ckpt
    embeds = model.embed(prompt(8, 30))[None]
    args = dict(max_new_tokens=2, video=VideoSpan(2, 3, 8), alpha=0.5, layer=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(model, embeds, **args)


def test_videospan_mismatch_and_bad_fields():
    with pytest.raises(ValueError, match=r"frames\*tokens_per_frame = 3\*8 = 24 does not match the 20 video rows"):
        VideoSpan(2, 3, 8).check(40, video_rows=20)
    with pytest.raises(ValueError, match="VideoSpan.frames=0 must be an integer >= 1"):
        VideoSpan(0, 0, 8)


# ---- one value for a method and its parameters -----------------------------------------------------------------


def test_method_value_equals_the_keywords(ckpt):
    from minivtp.generate import Method
    model, _ = ckpt
    embeds = model.embed(prompt(10, 40))[None]
    video = VideoSpan(start=2, frames=4, tokens_per_frame=8)
    by_keywords = generate(model, embeds, 4, video=video, alpha=0.25, layer=2, head_pool="mean", ranking="sequence")
    by_value = generate(model, embeds, 4, video=video, method=Method(alpha=0.25, layer=2, head_pool="mean",
                                                                    ranking="sequence"))
    assert by_value.kept.tolist() == by_keywords.kept.tolist()
    torch.testing.assert_close(by_value.logits, by_keywords.logits, rtol=0, atol=0)
    rand = generate(model, embeds, 2, video=video, method="random", alpha=0.25, layer=2, seed=1)
    again = generate(model, embeds, 2, video=video, method=Method("random", alpha=0.25, layer=2), seed=1)
    assert rand.kept.tolist() == again.kept.tolist()


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="fastest"), r"method='fastest' must be one of 'llm-vtp'"),
    (dict(selection="random"), r"unknown keyword selection: a Method takes alpha, layer, head_pool"),
    (dict(ranking="global"), r"ranking='global' must be one of 'frame', 'sequence'"),
])
def test_bad_method_arguments(ckpt, kwargs, match):
    model, _ = ckpt
    embeds = model.embed(prompt(8, 30))[None]
    with pytest.raises(ValueError, match=match):
        generate(model, embeds, 2, video=VideoSpan(2, 3, 8), alpha=0.5, layer=2, **kwargs)


def test_a_method_value_and_keywords_together_are_refused(ckpt):
    from minivtp.generate import Method
    model, _ = ckpt
    with pytest.raises(ValueError, match=r"either method=Method\(...\) or keywords \(alpha\)"):
        generate(model, model.embed(prompt(8, 30))[None], 2, video=VideoSpan(2, 3, 8), method=Method(layer=2),
                 alpha=0.5)
