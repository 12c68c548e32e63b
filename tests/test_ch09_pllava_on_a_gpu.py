"""Chapter 09: PLLaVA's pooling and the video prompt (the GPU run itself is in bench/)."""

import torch
from tutorial import run_chapter

from minivtp.hosts.llava import pllava_pool


def test_chapter_runs_and_prints_what_it_shows():
    run_chapter(9)


def test_first_pooled_token_is_the_block_mean():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 16, 1)
    blocks = x.view(2, 4, 4)[:, :2, :2]
    assert pllava_pool(x, 4, (1, 2, 2))[0, 0] == blocks.mean()
