"""The exercise checks catch the mistakes students make, and tell them what they did. Each wrong solution below
is a plausible slip, written from tutorial/exercises.md alone; the check it is written against (and, for the
pipeline-level ones, the capstone) must fail on it with the hint that tutorial/exercises.md lists for it: every
quoted message of that table is asserted here (test_every_documented_hint_is_tested)."""

import math
import re
import sys
from pathlib import Path

import pytest
import torch
from einops import rearrange
from test_exercises import (CAPSTONE_CASES, EQ5_CASES, OURS, PLUGS, capstone_checkpoint, check_1_rms_norm,  # noqa: F401
                            check_2_rope, check_3_kv_cache, check_4_eq4, check_5_eq5_eq6, check_6_eq7_eq8,
                            check_7_drop_rows, check_8_capstone)

from minivtp.model import EMPTY, KVCache, causal_mask, rotate_half

EXERCISES = Path(__file__).resolve().parent.parent / "tutorial" / "exercises.md"
def hinted(*hints):  # a pattern for pytest.raises(match=...) that finds any of the hints, word for word
    return "|".join(re.escape(h) for h in hints)


# ---- 1-2: RMSNorm and RoPE -------------------------------------------------------------------------------------


def rms_in_bfloat16(x, weight, eps):  # the mean of squares taken in x's dtype
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rms_no_cast_back(x, weight, eps):  # float32 math, float32 result
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rms_wrong_axis(x, weight, eps):  # the mean over the rows instead of the channels
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(0, keepdim=True) + eps)).to(x.dtype) * weight


def rms_no_sqrt(x, weight, eps):
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope_neighbours(x, cos, sin):  # pairs (2i, 2i+1), the interleaved layout of the RoPE paper
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)


def rope_turns_backwards(x, cos, sin):  # rotate_half written as cat(x2, -x1)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([x2, -x1], -1) * sin


def rope_adds(x, cos, sin):  # cos and sin added, not a rotation
    return x * cos + rotate_half(x) + sin


def test_the_rope_check_never_passes_by_returning_early(monkeypatch):
    """Without transformers' apply_rotary_pos_emb the check must fail loudly, not return as if it had passed."""
    monkeypatch.setitem(sys.modules, "transformers.models.llama.modeling_llama", None)  # import -> ImportError
    with pytest.raises(ImportError):
        check_2_rope(OURS["apply_rope"])


# ---- 3: the cache ----------------------------------------------------------------------------------------------


# subtle: inside minivtp a renumbered cache gives the same answers (the mask only compares positions, and every
# cached row is in a decoded token's past), so only exercise 3 itself can catch it; the contract still matters:
# a cache that forgets where its rows were cannot be checked, drawn or extended (a StaticKVCache, say).
class SlotsAsPositions(KVCache):  # keep() packs the rows but renumbers them 0..n-1
    def keep(self, rows):
        super().keep(rows)
        self.pos[: rows.numel()] = torch.arange(rows.numel())


class KeepsWithoutPacking(KVCache):  # keep() forgets rows by setting length, leaving the dropped ones in front
    def keep(self, rows):
        self.pos[rows.numel():] = EMPTY
        self.length = rows.numel()


class AppendReturnsNewRows(KVCache):  # append() returns what it was given, not every filled row
    def append(self, k, v, pos):
        super().append(k, v, pos)
        return k, v, pos


class AppendNumbersSlots(KVCache):  # append() ignores `pos` and stores slot numbers
    def append(self, k, v, pos):
        return super().append(k, v, torch.arange(self.length, self.length + k.shape[2]))


# ---- 4: Eq. 4 --------------------------------------------------------------------------------------------------


def renormalised(A, v):  # "attention over the video": each question row renormalised over the video columns
    A_qv = A[v.end :, v.start : v.end]
    return A_qv / A_qv.sum(-1, keepdim=True)


def prefix_columns(A, v):  # ":TNv" taken literally: the prefix columns too
    return A[v.end :, : v.end]


# ---- 5: Eq. 5-6 ------------------------------------------------------------------------------------------------


def per_frame(a_v, video, k, offset=lambda t, Nv: t * Nv, start=True):
    a = rearrange(a_v, "(t n) -> t n", t=video.frames)
    S = torch.cat([offset(t, video.tokens_per_frame) + a[t].topk(k).indices for t in range(video.frames)])
    return (video.start if start else 0) + S.sort().values


def naive_ceil(a_v, video, alpha):  # math.ceil(0.55 * 100) is 56
    return per_frame(a_v, video, math.ceil(alpha * video.tokens_per_frame))


def across_frames(a_v, video, alpha):  # the whole video's top T*k: Tab. 5's other ranking, not Eq. 5
    k = math.ceil(round(alpha * video.tokens_per_frame, 9)) * video.frames
    return video.start + a_v.topk(k).indices.sort().values


def frame_off_by_one(a_v, video, alpha):  # (t + 1) * Nv: the paper's 1-based t, kept with 0-based frames
    return per_frame(a_v, video, math.ceil(round(alpha * video.tokens_per_frame, 9)), lambda t, Nv: (t + 1) * Nv)


def forgot_start(a_v, video, alpha):  # positions within the video, not within the prompt
    return per_frame(a_v, video, math.ceil(round(alpha * video.tokens_per_frame, 9)), start=False)


def unsorted(a_v, video, alpha):  # each frame's top k in topk's order, best first
    k = math.ceil(round(alpha * video.tokens_per_frame, 9))
    a = rearrange(a_v, "(t n) -> t n", t=video.frames)
    return video.start + torch.cat([t * video.tokens_per_frame + a[t].topk(k).indices for t in range(video.frames)])


def floor_instead_of_ceil(a_v, video, alpha):
    return per_frame(a_v, video, max(1, int(alpha * video.tokens_per_frame)))


# ---- 7: the step at layer M ------------------------------------------------------------------------------------


def only_layer_m(x, pos, cos, sin, caches, rows):  # compresses the cache of layer M, forgets layers 1..M-1
    caches[-1].keep(rows)
    return x[:, rows], pos[rows], cos[rows], sin[rows]


def all_but_layer_m(x, pos, cos, sin, caches, rows):  # layers 1..M-1, reading "1..M" as range(1, M)
    for cache in caches[:-1]:
        cache.keep(rows)
    return x[:, rows], pos[rows], cos[rows], sin[rows]


def renumbered(x, pos, cos, sin, caches, rows):  # positions as slots: the kept rows become 0..n-1, RoPE too
    for cache in caches:
        cache.keep(rows)
    n = rows.numel()
    return x[:, rows], torch.arange(n), cos[:n], sin[:n]


def table_head(x, pos, cos, sin, caches, rows):  # the right positions, the first n rows of the RoPE tables
    for cache in caches:
        cache.keep(rows)
    n = rows.numel()
    return x[:, rows], pos[rows], cos[:n], sin[:n]


def uncut_tables(x, pos, cos, sin, caches, rows):  # "the RoPE tables" returned as they came
    for cache in caches:
        cache.keep(rows)
    return x[:, rows], pos[rows], cos, sin


def uncut_pos(x, pos, cos, sin, caches, rows):  # the positions returned as they came
    for cache in caches:
        cache.keep(rows)
    return x[:, rows], pos, cos[rows], sin[rows]


def compress_by_hand(x, pos, cos, sin, caches, rows):  # exercise 6 on each cache's tensors, not cache.keep
    for cache in caches:
        cache.k, cache.v = cache.k[:, :, rows], cache.v[:, :, rows]
    return x[:, rows], pos[rows], cos[rows], sin[rows]


def no_compression(x, pos, cos, sin, caches, rows):  # prunes the hidden states only
    return x[:, rows], pos[rows], cos[rows], sin[rows]


# ---- more of a student's mistakes, one exercise at a time -------------------------------------------------------


def rms_eps_outside(x, weight, eps):  # eps added to the root, not under it
    xf = x.float()
    return (xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype) * weight


def rms_eps_after_rsqrt(x, weight, eps):  # torch.rsqrt(ms) + eps: the parenthesis closed one term early
    xf = x.float()
    return (xf * (torch.rsqrt(xf.pow(2).mean(-1, keepdim=True)) + eps)).to(x.dtype) * weight


def rms_no_eps(x, weight, eps):  # eps forgotten
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True))).to(x.dtype) * weight


def rms_mean_of_everything(x, weight, eps):  # .mean() without a dim: one number for the whole tensor
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean() + eps)).to(x.dtype) * weight


def rms_l2_norm(x, weight, eps):  # x / ||x||: the norm of the row, not its root mean square
    xf = x.float()
    return (xf / (xf.norm(dim=-1, keepdim=True) + eps)).to(x.dtype) * weight


def rms_weight_added(x, weight, eps):  # the gain added, as a bias would be
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) + weight


def rope_cos_sin_swapped(x, cos, sin):  # sin multiplies x, cos the rotated half
    return x * sin + rotate_half(x) * cos


def rope_no_minus(x, cos, sin):  # rotate_half written as cat(x2, x1): no sign, a reflection, not a rotation
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([x2, x1], -1) * sin


class KeepShrinksBuffer(KVCache):  # keep() replaces the buffers by the kept rows: the cache is now 3 slots long
    def keep(self, rows):
        self.k, self.v, self.pos = self.k[:, :, rows], self.v[:, :, rows], self.pos[rows]
        self.length = rows.numel()


class AppendForgetsLength(KVCache):  # append() writes the rows but never moves length
    def append(self, k, v, pos):
        start = self.length
        out = super().append(k, v, pos)
        self.length = start
        return out


class KeepForgetsValues(KVCache):  # keep() packs the keys and positions, not the values
    def keep(self, rows):
        n = rows.numel()
        self.k[:, :, :n] = self.k.index_select(2, rows)
        self.pos[:n] = self.pos.index_select(0, rows)
        self.length = n


def eq4_paper_indices(A, v):  # Eq. 4's A[TNv:, :TNv] as printed, for a prompt that starts with the video
    TNv = v.frames * v.tokens_per_frame
    return A[TNv:, :TNv]


def eq4_pooled(A, v):  # the mean over the question rows taken here: that is a_v, minivtp's next step
    return A[v.end :, v.start : v.end].mean(0)


def eq4_last_video_row(A, v):  # the rows from the last video token on
    return A[v.end - 1 :, v.start : v.end]


def k_exact(video, alpha):
    return math.ceil(round(alpha * video.tokens_per_frame, 9))


def int_plus_one(a_v, video, alpha):  # "ceil is int + 1": wrong whenever alpha * Nv is whole
    return per_frame(a_v, video, int(alpha * video.tokens_per_frame) + 1)


def rounded(a_v, video, alpha):  # round(): to the nearest, 2.5 to 2
    return per_frame(a_v, video, round(alpha * video.tokens_per_frame))


def floor_count(a_v, video, alpha):  # int(): the released code's floor, 0 tokens when alpha * Nv < 1
    return per_frame(a_v, video, int(alpha * video.tokens_per_frame))


def topk_frame_axis(a_v, video, alpha):  # topk along dim 0 of (T, Nv): the best frames of each token slot
    a = rearrange(a_v, "(t n) -> t n", t=video.frames)
    frames = a.topk(k_exact(video, alpha), dim=0).indices  # (k, Nv), frame numbers
    return video.start + (frames * video.tokens_per_frame + torch.arange(video.tokens_per_frame)).flatten().sort().values


def lowest_scores(a_v, video, alpha):  # topk(largest=False): the least attended tokens of each frame
    a = rearrange(a_v, "(t n) -> t n", t=video.frames)
    S_t = a.topk(k_exact(video, alpha), dim=1, largest=False).indices
    return video.start + (torch.arange(video.frames)[:, None] * video.tokens_per_frame + S_t).flatten().sort().values


def frames_interleaved(a_v, video, alpha):  # view(Nv, T).T: frame t read as a_v[t::T]
    a = a_v.view(video.tokens_per_frame, video.frames).T
    S_t = a.topk(k_exact(video, alpha), dim=1).indices
    return video.start + (torch.arange(video.frames)[:, None] * video.tokens_per_frame + S_t).flatten().sort().values


def compress_slice(k, v, rows):  # from the first kept row to the last: the dropped rows between stay
    return k[:, :, rows[0] : rows[-1] + 1], v[:, :, rows[0] : rows[-1] + 1]


def compress_batch_axis(k, v, rows):  # k[rows]: the first axis is the batch
    return k[rows], v[rows]


def compress_keys_only(k, v, rows):  # V forgotten
    return k[:, :, rows], v


def drop_x_batch_axis(x, pos, cos, sin, caches, rows):  # x[rows]: (1, N, C) has the rows in dim 1
    for cache in caches:
        cache.keep(rows)
    return x[rows], pos[rows], cos[rows], sin[rows]


def drop_keeps_x(x, pos, cos, sin, caches, rows):  # the caches and tables cut, the hidden states passed on whole
    for cache in caches:
        cache.keep(rows)
    return x, pos[rows], cos[rows], sin[rows]


# ---- each check fails on its mistakes, with the hint exercises.md lists ----------------------------------------


MISTAKES = [  # (id, the exercise whose test must catch it, the wrong solution, the hint it must give)
    ("rms-bfloat16-math", 1, rms_in_bfloat16, "take the mean of squares of x.float()"),
    ("rms-no-cast-back", 1, rms_no_cast_back, "cast back to x's dtype"),
    ("rms-wrong-axis", 1, rms_wrong_axis, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rms-no-sqrt", 1, rms_no_sqrt, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rms-eps-outside", 1, rms_eps_outside, "eps outside the square root"),
    ("rms-eps-after-rsqrt", 1, rms_eps_after_rsqrt, "eps added after rsqrt"),
    ("rms-no-eps", 1, rms_no_eps, "no eps at all"),
    ("rms-mean-of-everything", 1, rms_mean_of_everything, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rms-l2-norm", 1, rms_l2_norm, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rms-weight-added", 1, rms_weight_added, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rope-neighbours", 2, rope_neighbours, "channel i must turn with channel i + D/2"),
    ("rope-backwards", 2, rope_turns_backwards, "channel i must turn with channel i + D/2"),
    ("rope-adds", 2, rope_adds, "changed the norm of a row"),
    ("rope-cos-sin-swapped", 2, rope_cos_sin_swapped, "moved the row at position 0"),
    ("rope-no-minus", 2, rope_no_minus, "changed the norm of a row"),
    ("cache-renumbers", 3, SlotsAsPositions, "a kept row keeps its old position"),
    ("cache-no-packing", 3, KeepsWithoutPacking, "move the kept rows to the front"),
    ("cache-keep-shrinks-buffer", 3, KeepShrinksBuffer, "keep must leave the buffer's capacity"),
    ("cache-keep-forgets-values", 3, KeepForgetsValues, "the values in slots 0..2 are not those of rows 1, 4, 5"),
    ("append-new-rows", 3, AppendReturnsNewRows, "returns those of every filled slot"),
    ("append-slot-numbers", 3, AppendNumbersSlots, "returns those of every filled slot"),
    ("append-forgets-length", 3, AppendForgetsLength, "adds the rows it wrote to length"),
    ("eq4-video-rows", 4, lambda A, v: A[: v.end, v.start : v.end], "(question rows, video columns) is (4, 8)"),
    ("eq4-video-rows-only", 4, lambda A, v: A[v.start : v.end - 4, v.start : v.end], "the question rows are 11..14"),
    ("eq4-transposed", 4, lambda A, v: A[v.start : v.end, v.end :], "(question rows, video columns) is (4, 8)"),
    ("eq4-prefix-columns", 4, prefix_columns, "(question rows, video columns) is (4, 8)"),
    ("eq4-shifted-columns", 4, lambda A, v: A[v.end :, v.start - 1 : v.end - 1], "the video columns are 3..10"),
    ("eq4-renormalised", 4, renormalised, "holds values that are not entries of A"),
    ("eq4-paper-indices", 4, eq4_paper_indices, "(question rows, video columns) is (4, 8)"),
    ("eq4-pooled", 4, eq4_pooled, "(question rows, video columns) is (4, 8)"),
    ("eq4-last-video-row", 4, eq4_last_video_row, "(question rows, video columns) is (4, 8)"),
    ("eq6-forgot-start", 5, forgot_start, "(positions are start + t * Nv + j)"),
    ("eq6-off-by-one", 5, frame_off_by_one, "rank within each frame"),
    ("eq5-across-frames", 5, across_frames, "rank within each frame"),
    ("eq6-unsorted", 5, unsorted, "S must be sorted prompt positions"),
    ("eq5-naive-ceil", 5, naive_ceil, "count with exact arithmetic, not a float ceil"),
    ("eq5-floor", 5, floor_count, "the floor: Eq. 5 rounds up"),
    ("eq5-floor-at-least-one", 5, floor_instead_of_ceil, "the floor: Eq. 5 rounds up"),
    ("eq5-int-plus-one", 5, int_plus_one, "one too many whenever alpha * Nv is a whole number"),
    ("eq5-round", 5, rounded, "the nearest: Eq. 5 rounds up"),
    ("eq5-frame-axis", 5, topk_frame_axis, "a topk along the frame axis"),
    ("eq5-lowest", 5, lowest_scores, "the lowest scores of each frame"),
    ("eq5-interleaved", 5, frames_interleaved, "frames interleaved"),
    ("eq7-head-axis", 6, lambda k, v, rows: (k[:, rows[:2]], v[:, rows[:2]]), "select along the row axis (dim 2)"),
    ("eq7-batch-axis", 6, compress_batch_axis, "select along the row axis (dim 2)"),
    ("eq7-swapped", 6, lambda k, v, rows: (v[:, :, rows], k[:, :, rows]), "K~ = K[rows] and V~ = V[rows]"),
    ("eq7-slice", 6, compress_slice, "keeps the dropped rows between them"),
    ("eq7-keys-only", 6, compress_keys_only, "selects the same rows of V as of K"),
    ("eq8-video-only", 6, lambda k, v, rows: (k[:, :, rows[2:-2]], v[:, :, rows[2:-2]]),
     "the prefix and the question rows too"),
    ("drop-only-layer-M", 7, only_layer_m, "compress every layer 1..M"),
    ("drop-all-but-M", 7, all_but_layer_m, "compress every layer 1..M"),
    ("drop-no-compression", 7, no_compression, "compress every layer 1..M"),
    ("drop-compress-by-hand", 7, compress_by_hand, "sets length and the positions too"),
    ("drop-renumbered", 7, renumbered, "do not renumber them"),
    ("drop-uncut-pos", 7, uncut_pos, "cut pos too, return pos[rows]"),
    ("drop-uncut-tables", 7, uncut_tables, "cut the RoPE tables too"),
    ("drop-table-head", 7, table_head, "each kept row keeps its own RoPE angles"),
    ("drop-x-batch-axis", 7, drop_x_batch_axis, "the rows are dim 1"),
    ("drop-keeps-x", 7, drop_keeps_x, "the hidden states that go on must be x[:, rows]"),
]


def check_5_every_case(f):
    """Exercise 5's test over all its cases: at least one fails, and every failure says the same thing."""
    messages = []
    for alpha, Nv in EQ5_CASES:
        try:
            check_5_eq5_eq6(f, alpha, Nv)
        except AssertionError as e:
            messages.append(f"({alpha}, {Nv}): {e}")
    if messages:
        raise AssertionError("\n".join(messages))


CHECKS = {1: check_1_rms_norm, 2: check_2_rope, 3: check_3_kv_cache, 4: check_4_eq4, 5: check_5_every_case,
          6: check_6_eq7_eq8, 7: lambda f: check_7_drop_rows(f, KVCache)}


@pytest.mark.parametrize("exercise,wrong,hint", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_fails_with_its_hint(exercise, wrong, hint):
    with pytest.raises(AssertionError) as caught:
        CHECKS[exercise](wrong)
    if exercise == 5:  # every failing case of exercise 5 must name the mistake, not only the first
        for line in str(caught.value).splitlines():
            if line.startswith("("):
                assert hint in line, f"{line}\n does not say: {hint}"
    else:
        assert hint in str(caught.value), f"{caught.value}\n does not say: {hint}"


def test_the_right_solutions_pass_the_same_checks():  # so the hints above come from the mistakes, not the checks
    check_1_rms_norm(OURS["rms_norm"])
    check_2_rope(OURS["apply_rope"])
    check_3_kv_cache(KVCache)
    check_4_eq4(OURS["question_to_video"])
    check_6_eq7_eq8(OURS["compress"])
    check_7_drop_rows(OURS["drop_rows"], KVCache)


@pytest.mark.parametrize("wrong", [naive_ceil, across_frames, frame_off_by_one, forgot_start, floor_instead_of_ceil])
def test_eq5_mistakes_fail(wrong):
    failures = 0
    for alpha, Nv in EQ5_CASES:
        try:
            check_5_eq5_eq6(wrong, alpha, Nv)
        except AssertionError:
            failures += 1
    assert failures >= 1, f"{wrong.__name__} passes every Eq. 5-6 case"


def test_naive_ceil_fails_exactly_on_the_float_traps():
    for alpha, Nv in EQ5_CASES:
        trap = alpha * Nv != math.ceil(alpha * Nv) and (alpha * Nv) % 1 < 1e-9
        if trap:
            with pytest.raises(AssertionError, match="exact arithmetic"):
                check_5_eq5_eq6(naive_ceil, alpha, Nv)
        else:
            check_5_eq5_eq6(naive_ceil, alpha, Nv)
    assert 0.55 * 100 == 55.00000000000001 and 0.3 * 10 == 3.0  # the facts the chapter states


# ---- the capstone catches the pipeline mistakes, in every case that can show them ------------------------------


def ours():
    return {name: OURS[name] for name in PLUGS}


def mask_from_slots(q_pos, k_pos):  # the scoring mask from slot numbers: each row's and key's index, not position
    return causal_mask(torch.arange(len(q_pos)), torch.arange(len(k_pos)))


def test_the_a_v_message_names_exercises_1_to_3_and_the_function_to_look_at(capstone_checkpoint):  # noqa: F811
    # rms_norm with eps outside the root passes every test but its own: the capstone's a_v message names the
    # suspects, exercises 1-3 among them, and the one whose replacement by a right function makes a_v match
    with pytest.raises(AssertionError) as caught:
        check_8_capstone(dict(ours(), rms_norm=rms_eps_outside), *capstone_checkpoint, CAPSTONE_CASES[0])
    message = str(caught.value)
    assert "the video scores a_v" in message and "exercises 1-3, even if their tests pass" in message
    assert "a_v matches for exercise 1 (rms_norm)" in message


def test_the_capstone_passes_minivtps_own_functions(capstone_checkpoint):  # noqa: F811
    check_8_capstone(ours(), *capstone_checkpoint, CAPSTONE_CASES[1])


L = 4  # the capstone model's layers
has_prefix = lambda c: c[0] > 0  # noqa: E731
layers_before_m = lambda c: c[5] >= 2  # noqa: E731
layers_after_m = lambda c: c[5] < L  # noqa: E731
float_trap = lambda c: math.ceil(c[4] * c[2]) != math.ceil(round(c[4] * c[2], 9))  # noqa: E731
every = lambda c: True  # noqa: E731

PIPELINE = [  # (id, the plugged function, the wrong one, the hint, the cases that must catch it)
    ("renormalised", "question_to_video", renormalised, "the video scores a_v", every),
    ("prefix-columns", "question_to_video", prefix_columns, ("stopped inside your functions", "the video scores a_v"),
     has_prefix),
    ("only-layer-M", "drop_rows", only_layer_m, "logits differ from the oracle", layers_before_m),
    ("all-but-layer-M", "drop_rows", all_but_layer_m, "logits differ from the oracle", every),
    ("no-compression", "drop_rows", no_compression, "logits differ from the oracle", every),
    ("renumbered", "drop_rows", renumbered, "logits differ from the oracle", layers_after_m),
    ("table-head", "drop_rows", table_head, "logits differ from the oracle", layers_after_m),
    ("keep-without-packing", "KVCache", KeepsWithoutPacking, "logits differ from the oracle", every),
    ("naive-ceil", "select_per_frame", naive_ceil, "the oracle keeps", float_trap),
    ("forgot-start", "select_per_frame", forgot_start, "the oracle keeps", has_prefix),
    ("off-by-one", "select_per_frame", frame_off_by_one, ("stopped inside your functions", "the oracle keeps"), every),
    ("across-frames", "select_per_frame", across_frames, "the oracle keeps", None),  # None: most cases, not all
    # exercise 1's test catches these now; the capstone still names exercise 1 among the suspects of a_v
    ("eps-outside", "rms_norm", rms_eps_outside, "the video scores a_v", None),
    ("keep-shrinks-buffer", "KVCache", KeepShrinksBuffer, "stopped inside your functions", every),
    # not an exercise: the fast path's scoring mask built from the rows' slots in the score block, 0..Nq-1, instead
    # of their positions; the literal path (all N rows from slot 0) is blind to it, the fast path is not
    ("mask-from-slots", "causal_mask", mask_from_slots, "the video scores a_v of the fast path", every),
]


@pytest.mark.parametrize("name,wrong,hint,where", [p[1:] for p in PIPELINE], ids=[p[0] for p in PIPELINE])
def test_the_capstone_catches_pipeline_mistakes(capstone_checkpoint, name, wrong, hint, where):  # noqa: F811
    pattern = hinted(*((hint,) if isinstance(hint, str) else hint))
    caught = []
    for case in CAPSTONE_CASES:
        try:
            check_8_capstone(dict(ours(), **{name: wrong}), *capstone_checkpoint, case)
        except AssertionError as e:
            assert re.search(pattern, str(e)), f"case {case} caught {wrong.__name__} with the wrong hint: {e}"
            caught.append(case)
    must = [c for c in CAPSTONE_CASES if where(c)] if where else []
    assert all(c in caught for c in must), f"{wrong.__name__} passes the capstone cases {set(must) - set(caught)}"
    assert len(caught) > len(CAPSTONE_CASES) / 2, f"{wrong.__name__} is caught in {len(caught)} capstone cases only"


def test_every_documented_hint_is_tested():
    """exercises.md's table "If a test fails", checked against the mistakes above: every quoted message in a row
    `test_N` is the hint of a wrong solution of exercise N here (for test_8, of one the capstone catches), and
    every hint here is quoted in a row of its own exercise."""
    tested = {(str(m[1]), m[3]) for m in MISTAKES}
    tested |= {("8", h) for p in PIPELINE for h in ((p[3],) if isinstance(p[3], str) else p[3])}
    table = EXERCISES.read_text().split("## If a test fails", 1)[1]
    documented = set()
    for n, cell in re.findall(r"^\| `test_(\d)`([^|]*)\|", table, flags=re.M):
        documented |= {(n, q) for q in re.findall(r'"([^"]+)"', cell)}
    assert len(documented) >= 40, f"found only {len(documented)} quoted hints in the table"
    untested = sorted(documented - tested)
    assert not untested, f"exercises.md documents hints no mistake of that exercise produces: {untested}"
    undocumented = sorted(tested - documented)
    assert not undocumented, f"hints tested here but missing from exercises.md's table, by exercise: {undocumented}"
