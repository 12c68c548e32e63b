"""Chapter 05: Eq. 4-6."""

import math

import torch
from tutorial import run_chapter

from minivtp.vtp import (VideoSpan, n_keep, pool_heads, question_to_video, select_per_frame,
                         select_whole_sequence, video_scores)


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(5)
    assert ns["video"].end == 11


def test_the_worked_example_by_hand():
    video = VideoSpan(start=3, frames=2, tokens_per_frame=4)
    a_v = torch.tensor([.1, .9, .7, .8, .5, .1, .2, .6])
    # frame 1: .9 (j=1) and .8 (j=3); frame 2: .6 (j=3) and .5 (j=0); then + 3 for the prefix, + 4 for frame 2
    assert select_per_frame(a_v, video, 0.5).tolist() == [3 + 1, 3 + 3, 3 + 4 + 0, 3 + 4 + 3]
    # the whole video's four best, .9 .8 .7 .6: three of frame 1 and one of frame 2; the two rankings differ
    assert select_whole_sequence(a_v, video, 0.5).tolist() == [3 + 1, 3 + 2, 3 + 3, 3 + 4 + 3]


def test_the_budgets_agree_exactly_when_the_chapter_says():
    # T * ceil(x) == ceil(T * x) iff ceil(x) - x < 1 / T, by brute force over exact rationals (independent of n_keep)
    from fractions import Fraction
    for T in range(1, 13):
        for num in range(1, 200):
            x = Fraction(num, 7)
            brute = T * math.ceil(x) == math.ceil(T * x)
            assert brute == (math.ceil(x) - x < Fraction(1, T)), (T, x)
            if T == 1:
                assert brute
    ns = run_chapter(5)
    assert ns["checked"] == 16 * 60 * 10 and 0 < ns["agree"] < ns["checked"]
    assert n_keep(0.5, 4) == 2 and n_keep(0.3, 10) == 3 and n_keep(0.55, 100) == 55 and n_keep(0.01, 144) == 2
    assert math.ceil(0.55 * 100) == 56  # the trap the chapter shows


def test_eq4_then_mean_then_pool_shapes():
    A = torch.rand(4, 12, 12)  # (H, N, N); 2 prefix rows, 2 frames x 3 tokens, 4 question rows
    video = VideoSpan(2, 2, 3)
    A_qv = question_to_video(pool_heads(A, "max"), video)
    assert A_qv.shape == (4, 6)
    torch.testing.assert_close(video_scores(A_qv), A.amax(0)[8:, 2:8].mean(0))


def test_the_readme_toy_table_alpha_columns_that_coincide():
    # README, "The toy experiments": alpha 0.05 and 0.1 keep one token of a toy frame's 9, 0.2 two, 0.5 five
    assert [n_keep(a, 9) for a in (0.05, 0.1, 0.2, 0.5)] == [1, 1, 2, 5]
    assert math.ceil(0.05 * 9) == math.ceil(0.1 * 9) == 1  # 0.45 and 0.9: no float trap hides here
