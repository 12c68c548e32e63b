"""The exercise checks catch the mistakes students make. Each wrong solution below is a plausible slip; the check
it is written against (and, for the pipeline-level ones, the capstone) must fail on it, with the hint that
tutorial/exercises.md lists for it."""

import math
import sys

import pytest
import torch
from einops import rearrange
from test_exercises import (CAPSTONE_CASES, EQ5_CASES, OURS, PLUGS, capstone_checkpoint, check_1_rms_norm,  # noqa: F401
                            check_2_rope, check_3_kv_cache, check_4_eq4, check_5_eq5_eq6, check_6_eq7_eq8,
                            check_7_drop_rows, check_8_capstone)

from minivtp.model import EMPTY, KVCache

# ---- RMSNorm and RoPE ------------------------------------------------------------------------------------------


def bf16_throughout(x, weight, eps):  # the right formula, but the mean of squares of bf16 values taken in bf16
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def test_rms_norm_in_bf16_fails():
    with pytest.raises(AssertionError, match=r"mean of squares of x\.float\(\)"):
        check_1_rms_norm(bf16_throughout)


def neighbours(x, cos, sin):  # GPT-J's layout, pairs (2i, 2i + 1), with LLaMA's split-halves tables
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., : x.shape[-1] // 2], sin[..., : x.shape[-1] // 2]
    return torch.stack([x1 * c - x2 * s, x2 * c + x1 * s], -1).flatten(-2)


def test_rope_mistakes_fail():
    with pytest.raises(AssertionError, match="split halves"):
        check_2_rope(neighbours)


def test_the_rope_check_never_passes_by_returning_early(monkeypatch):
    """Without transformers' apply_rotary_pos_emb the check must fail loudly, not return as if it had passed."""
    monkeypatch.setitem(sys.modules, "transformers.models.llama.modeling_llama", None)  # import -> ImportError
    with pytest.raises(ImportError):
        check_2_rope(OURS["apply_rope"])


# ---- Eq. 5-6 ---------------------------------------------------------------------------------------------------


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


def floor_instead_of_ceil(a_v, video, alpha):
    return per_frame(a_v, video, max(1, int(alpha * video.tokens_per_frame)))


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


# ---- Eq. 4 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", [
    lambda A, v: A[: v.end, v.start : v.end],  # video rows instead of question rows
    lambda A, v: A[v.start : v.end, v.end :],  # transposed: video rows x question columns
    lambda A, v: A[v.end :, : v.end],  # forgets the prefix: ":TNv" taken literally
    lambda A, v: A[v.end :, v.start : v.end - 1],  # one video column short
], ids=["video-rows", "transposed", "prefix-columns", "off-by-one"])
def test_eq4_mistakes_fail(wrong):
    with pytest.raises(AssertionError):
        check_4_eq4(wrong)


# ---- the cache -------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("wrong", [SlotsAsPositions, KeepsWithoutPacking])
def test_cache_mistakes_fail(wrong):
    with pytest.raises(AssertionError):
        check_3_kv_cache(wrong)


@pytest.mark.parametrize("wrong", [
    lambda k, v, rows: (k[:, rows], v[:, rows]),  # the head axis
    lambda k, v, rows: (v[:, :, rows], k[:, :, rows]),  # K and V swapped
    lambda k, v, rows: (k[:, :, rows[2:-2]], v[:, :, rows[2:-2]]),  # only the kept video rows, Eq. 7 without Eq. 8
], ids=["head-axis", "swapped", "video-only"])
def test_eq7_eq8_mistakes_fail(wrong):
    with pytest.raises((AssertionError, IndexError)):
        check_6_eq7_eq8(wrong)


# ---- the step at layer M, alone and inside the whole generation ------------------------------------------------


def only_layer_m(x, pos, cos, sin, caches, rows):  # compresses the cache of layer M, forgets layers 1..M-1
    caches[-1].keep(rows)
    return x[:, rows], pos[rows], cos[rows], sin[rows]


def renumbered(x, pos, cos, sin, caches, rows):  # positions as slots: the kept rows become 0..n-1, RoPE too
    for cache in caches:
        cache.keep(rows)
    n = rows.numel()
    return x[:, rows], torch.arange(n), cos[:n], sin[:n]


def no_compression(x, pos, cos, sin, caches, rows):  # prunes the hidden states only
    return x[:, rows], pos[rows], cos[rows], sin[rows]


@pytest.mark.parametrize("wrong,hint", [(only_layer_m, "every layer 1..M"), (renumbered, "do not renumber"),
                                        (no_compression, "every layer 1..M")])
def test_drop_rows_mistakes_fail(wrong, hint):
    with pytest.raises(AssertionError, match=hint):
        check_7_drop_rows(wrong, KVCache)


def ours():
    return {name: OURS[name] for name in PLUGS}


def test_the_capstone_passes_minivtps_own_functions(capstone_checkpoint):  # noqa: F811
    check_8_capstone(ours(), *capstone_checkpoint, CAPSTONE_CASES[1])


@pytest.mark.parametrize("name,wrong,case", [
    ("drop_rows", only_layer_m, 1), ("drop_rows", renumbered, 1), ("drop_rows", no_compression, 0),
    ("KVCache", KeepsWithoutPacking, 1), ("select_per_frame", naive_ceil, 3), ("select_per_frame", across_frames, 0),
], ids=["only-layer-M", "renumbered", "no-compression", "keep-without-packing", "naive-ceil", "across-frames"])
def test_the_capstone_catches_pipeline_mistakes(capstone_checkpoint, name, wrong, case):  # noqa: F811
    with pytest.raises(AssertionError):
        check_8_capstone(dict(ours(), **{name: wrong}), *capstone_checkpoint, CAPSTONE_CASES[case])
