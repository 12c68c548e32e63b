"""VideoSpan for frames separated by text (Qwen3-VL writes a timestamp before each temporal group): the rows it names,
what LLM-VTP ranks and keeps, and the contiguous case unchanged."""

import math

import pytest
import torch

from minivtp import vtp
from minivtp.rivals import FastV, LookM
from minivtp.generate import Method, generate, prefill
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

# prefix rows 0..2, frame 0 at 3..6, a 3-row timestamp at 7..9, frame 1 at 10..13, a 2-row timestamp, frame 2 at
# 16..19, question rows 20..25
SPAN = VideoSpan(3, 3, 4, frame_starts=(3, 10, 16))
N = 26


def test_rows_end_and_checks():
    assert SPAN.rows().tolist() == [3, 4, 5, 6, 10, 11, 12, 13, 16, 17, 18, 19] and SPAN.end == 20
    assert torch.equal(VideoSpan(3, 3, 4).rows(), torch.arange(3, 15)) and VideoSpan(3, 3, 4).end == 15
    for bad in [(3, 10), (4, 10, 16), (3, 5, 16)]:  # a start per frame, frame 0 at start, frames not overlapping
        with pytest.raises(ValueError, match="frame_starts"):
            VideoSpan(3, 3, 4, frame_starts=bad)


def test_selection_maps_each_frame_to_its_own_rows():
    a_v = torch.tensor([.1, .9, .3, .2, .5, .1, .1, .6, .0, .0, .7, .8])
    assert vtp.select_per_frame(a_v, SPAN, 0.5).tolist() == [4, 5, 10, 13, 18, 19]
    S = vtp.select_per_frame(a_v, SPAN, 0.5)
    assert vtp.complement(S, SPAN).tolist() == [3, 6, 11, 12, 16, 17]
    rows = vtp.rows_to_keep(N, SPAN, S).tolist()  # the timestamps' rows stay with the prefix and the question
    assert rows == [0, 1, 2, 4, 5, 7, 8, 9, 10, 13, 14, 15, 18, 19] + list(range(20, 26))
    assert vtp.select_whole_sequence(a_v, SPAN, 0.25).tolist() == [4, 18, 19]


def tiny():
    torch.manual_seed(0)
    model = Transformer(Config(vocab_size=50, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, hidden_dim=48,
                               max_seq_len=64)).eval()
    return model, torch.randn(1, N, 32)


def test_scores_read_the_video_columns_only():
    """Each video token's score is the question rows' attention to its own column (the literal (H, N, N) matrix,
    sliced by hand), never a timestamp's; the fast scores equal the literal ones."""
    model, x = tiny()
    caches = model.new_caches(max_len=N)
    pos = torch.arange(N)
    cos, sin = model.rope(pos)
    x_in = model.forward_layers(x, cos, sin, pos, caches, stop=1)
    model.forward_layers(x_in, cos, sin, pos, caches, start=1, stop=2)
    A = vtp.layer_attention(model.layers[1], x_in, cos, sin, pos, caches[1]).amax(dim=0)  # (N, N)
    by_hand = A[20:][:, [3, 4, 5, 6, 10, 11, 12, 13, 16, 17, 18, 19]].mean(dim=0)
    for score in (vtp.scores_literal, vtp.scores_fast):
        torch.testing.assert_close(score(model.layers[1], x_in, cos, sin, pos, caches[1], SPAN), by_hand)


@pytest.mark.parametrize("method", ["llm-vtp", "fastv", "look-m", "random"])
def test_alpha_1_equals_unpruned_and_pruning_keeps_the_timestamps(method):
    model, x = tiny()
    plain = generate(model, x, 4)
    rule = {"fastv": FastV(alpha=1.0, layer=2), "look-m": LookM(recent=0.5, important=0.5)}.get(method) or \
        Method(method, alpha=1.0, layer=2)
    full = generate(model, x, 4, video=SPAN, method=rule)
    assert torch.equal(full.tokens, plain.tokens) and torch.equal(full.logits, plain.logits)
    if method == "look-m":
        return
    caches = model.new_caches(max_len=N)
    if method == "fastv":  # a rival brings its own prefill
        _, pruning = FastV(alpha=0.5, layer=2).prefill(model, x, caches, SPAN)
    else:
        _, pruning = prefill(model, x, caches, SPAN, Method(method, alpha=0.5, layer=2))
    kept_video = pruning.rows[torch.isin(pruning.rows, SPAN.rows())]
    assert set(pruning.rows.tolist()) >= {0, 1, 2, 7, 8, 9, 14, 15, *range(20, N)}  # every text row
    expected = 3 * math.ceil(0.5 * 4) if method != "fastv" else math.ceil(0.5 * 12)
    assert kept_video.numel() == expected
    assert caches[0].length == (N if method == "fastv" else N - (12 - expected))  # FastV keeps layers 1..K whole
