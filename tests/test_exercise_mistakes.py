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

from minivtp.model import EMPTY, KVCache, rotate_half

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


# ---- each check fails on its mistakes, with the hint exercises.md lists ----------------------------------------


MISTAKES = [  # (id, the check, the wrong solution, the hint it must give)
    ("rms-bfloat16-math", check_1_rms_norm, rms_in_bfloat16, "take the mean of squares of x.float()"),
    ("rms-no-cast-back", check_1_rms_norm, rms_no_cast_back, "cast back to x's dtype"),
    ("rms-wrong-axis", check_1_rms_norm, rms_wrong_axis, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rms-no-sqrt", check_1_rms_norm, rms_no_sqrt, "is not x / sqrt(mean(x**2 over the last axis) + eps) * w"),
    ("rope-neighbours", check_2_rope, rope_neighbours, "channel i must turn with channel i + D/2"),
    ("rope-backwards", check_2_rope, rope_turns_backwards, "channel i must turn with channel i + D/2"),
    ("rope-adds", check_2_rope, rope_adds, "changed the norm of a row"),
    ("cache-renumbers", check_3_kv_cache, SlotsAsPositions, "a kept row keeps its old position"),
    ("cache-no-packing", check_3_kv_cache, KeepsWithoutPacking, "move the kept rows to the front"),
    ("append-new-rows", check_3_kv_cache, AppendReturnsNewRows, "returns those of every filled slot"),
    ("append-slot-numbers", check_3_kv_cache, AppendNumbersSlots, "returns those of every filled slot"),
    ("eq4-video-rows", check_4_eq4, lambda A, v: A[: v.end, v.start : v.end],
     "(question rows, video columns) is (4, 8)"),
    ("eq4-video-rows-only", check_4_eq4, lambda A, v: A[v.start : v.end - 4, v.start : v.end],
     "the question rows are 11..14"),
    ("eq4-transposed", check_4_eq4, lambda A, v: A[v.start : v.end, v.end :],
     "(question rows, video columns) is (4, 8)"),
    ("eq4-prefix-columns", check_4_eq4, prefix_columns, "(question rows, video columns) is (4, 8)"),
    ("eq4-shifted-columns", check_4_eq4, lambda A, v: A[v.end :, v.start - 1 : v.end - 1],
     "the video columns are 3..10"),
    ("eq4-renormalised", check_4_eq4, renormalised, "holds values that are not entries of A"),
    ("eq6-forgot-start", lambda f: check_5_eq5_eq6(f, 0.3, 10), forgot_start, "(positions are start + t * Nv + j)"),
    ("eq6-off-by-one", lambda f: check_5_eq5_eq6(f, 0.3, 10), frame_off_by_one, "rank within each frame"),
    ("eq5-across-frames", lambda f: check_5_eq5_eq6(f, 0.3, 10), across_frames, "rank within each frame"),
    ("eq6-unsorted", lambda f: check_5_eq5_eq6(f, 0.3, 10), unsorted, "S must be sorted prompt positions"),
    ("eq5-naive-ceil", lambda f: check_5_eq5_eq6(f, 0.55, 100), naive_ceil,
     "count with exact arithmetic, not a float ceil"),
    ("eq7-head-axis", check_6_eq7_eq8, lambda k, v, rows: (k[:, rows[:2]], v[:, rows[:2]]),
     "select along the row axis (dim 2)"),
    ("eq7-swapped", check_6_eq7_eq8, lambda k, v, rows: (v[:, :, rows], k[:, :, rows]),
     "K~ = K[rows] and V~ = V[rows]"),
    ("eq8-video-only", check_6_eq7_eq8, lambda k, v, rows: (k[:, :, rows[2:-2]], v[:, :, rows[2:-2]]),
     "the prefix and the question rows too"),
    ("drop-only-layer-M", lambda f: check_7_drop_rows(f, KVCache), only_layer_m, "compress every layer 1..M"),
    ("drop-all-but-M", lambda f: check_7_drop_rows(f, KVCache), all_but_layer_m, "compress every layer 1..M"),
    ("drop-no-compression", lambda f: check_7_drop_rows(f, KVCache), no_compression, "compress every layer 1..M"),
    ("drop-compress-by-hand", lambda f: check_7_drop_rows(f, KVCache), compress_by_hand,
     "sets length and the positions too"),
    ("drop-renumbered", lambda f: check_7_drop_rows(f, KVCache), renumbered, "do not renumber them"),
    ("drop-uncut-pos", lambda f: check_7_drop_rows(f, KVCache), uncut_pos, "cut pos too, return pos[rows]"),
    ("drop-uncut-tables", lambda f: check_7_drop_rows(f, KVCache), uncut_tables, "cut the RoPE tables too"),
    ("drop-table-head", lambda f: check_7_drop_rows(f, KVCache), table_head, "each kept row keeps its own RoPE angles"),
]


@pytest.mark.parametrize("check,wrong,hint", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_fails_with_its_hint(check, wrong, hint):
    with pytest.raises(AssertionError, match=hinted(hint)):
        check(wrong)


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
    """The quoted messages of exercises.md's table "If a test fails" are hints that the tests above match."""
    tested = [m[3] for m in MISTAKES] + [h for p in PIPELINE for h in ((p[3],) if isinstance(p[3], str) else p[3])]
    table = EXERCISES.read_text().split("## If a test fails", 1)[1]
    quoted = re.findall(r'^\| `test_\d[^|]*?"([^"]+)"', table, flags=re.M)
    assert len(quoted) >= 20, f"found only {len(quoted)} quoted hints in the table"
    untested = [q for q in quoted if q not in tested]
    assert not untested, f"exercises.md documents hints no mistake test produces: {untested}"
    undocumented = sorted(set(tested) - set(quoted))
    assert not undocumented, f"hints tested here but missing from exercises.md's table: {undocumented}"
