"""Chapter 06: Eq. 7-8."""

import torch
from tutorial import run_chapter

from minivtp.model import KVCache
from minivtp.vtp import VideoSpan, compress_caches, rows_to_keep


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(6)
    assert ns["cache"].length == 6


def test_rows_are_prefix_kept_and_questions():
    assert rows_to_keep(10, VideoSpan(2, 2, 3), torch.tensor([3, 7])).tolist() == [0, 1, 3, 7, 8, 9]


def test_every_layer_keeps_the_same_rows():
    caches = [KVCache(1, 1, 10, 2) for _ in range(3)]
    for c in caches:
        c.append(torch.randn(1, 1, 10, 2), torch.randn(1, 1, 10, 2), torch.arange(10))
    compress_caches(caches, torch.tensor([0, 4, 9]))
    assert all(c.pos[: c.length].tolist() == [0, 4, 9] for c in caches)
