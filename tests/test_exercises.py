"""The exercises of tutorial/exercises.md. MINIVTP_SOLUTIONS=path/to/file.py runs them on a student's code;
without it, on minivtp's. Every reference here is independent of minivtp's implementation."""

import importlib.util
import math
import os
from fractions import Fraction

import pytest
import torch

from minivtp import model as mv_model
from minivtp import vtp as mv_vtp
from minivtp.model import Config, rope_cos_sin
from minivtp.vtp import VideoSpan


def _solutions():
    path = os.environ.get("MINIVTP_SOLUTIONS")
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("solutions", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOLUTIONS = _solutions()
OURS = {"rms_norm": mv_model.rms_norm, "apply_rope": mv_model.apply_rope, "KVCache": mv_model.KVCache,
        "question_to_video": mv_vtp.question_to_video, "select_per_frame": mv_vtp.select_per_frame,
        "compress": lambda k, v, rows: (k[:, :, rows], v[:, :, rows])}


def impl(name):
    if SOLUTIONS is None:
        return OURS[name]
    if not hasattr(SOLUTIONS, name):
        pytest.fail(f"{os.environ['MINIVTP_SOLUTIONS']} has no {name} yet")
    return getattr(SOLUTIONS, name)


def test_1_rms_norm():
    f = impl("rms_norm")
    x = torch.randn(4, 32, dtype=torch.float64)
    w = torch.rand(32, dtype=torch.float64)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(f(x.float(), w.float(), 1e-6).double(), ref, rtol=1e-5, atol=1e-6)
    big = (torch.randn(2, 64) * 300).bfloat16()
    y = f(big, torch.ones(64, dtype=torch.bfloat16), 1e-6)
    assert y.dtype == torch.bfloat16
    assert (y.float().pow(2).mean(-1) - 1).abs().max() < 0.05


def test_2_rope():
    f = impl("apply_rope")
    cfg = Config(dim=64, n_heads=4, n_kv_heads=4)  # D = 16
    pos = torch.arange(10)
    cos, sin = rope_cos_sin(cfg, pos)
    x = torch.randn(1, 2, 10, 16)
    y = f(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # pair (i, i + D/2) rotated by pos * theta^(-2i/D)
    i, p = 3, 7
    ang = torch.tensor(p * cfg.rope_theta ** (-2 * i / 16))
    a, b = x[0, 0, p, i], x[0, 0, p, i + 8]
    torch.testing.assert_close(y[0, 0, p, i], a * ang.cos() - b * ang.sin())
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except ImportError:
        return
    q_ref, _ = apply_rotary_pos_emb(x, x, cos[None], sin[None])
    torch.testing.assert_close(y, q_ref)


def test_3_kv_cache():
    cache = impl("KVCache")(1, 2, 8, 4)
    k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    K, V, P = cache.update(0, k, v, torch.arange(6))
    assert K.shape == (1, 2, 6, 4) and P.tolist() == list(range(6))
    cache.keep(torch.tensor([1, 4, 5]))
    assert cache.length == 3
    torch.testing.assert_close(cache.k[:, :, :3], k[:, :, [1, 4, 5]])
    torch.testing.assert_close(cache.v[:, :, :3], v[:, :, [1, 4, 5]])
    assert cache.pos[:3].tolist() == [1, 4, 5]
    K, V, P = cache.update(3, torch.ones(1, 2, 1, 4), torch.ones(1, 2, 1, 4), torch.tensor([6]))
    assert P.tolist() == [1, 4, 5, 6]


def test_4_eq4():
    f = impl("question_to_video")
    N = 15
    A = torch.arange(N * N, dtype=torch.float64).view(N, N)  # A[i, j] = i * N + j
    video = VideoSpan(start=3, frames=2, tokens_per_frame=4)  # video rows 3..10, question rows 11..14
    out = f(A, video)
    assert out.shape == (4, 8)
    rows, cols = (out // N).long(), (out % N).long()
    assert rows[:, 0].tolist() == [11, 12, 13, 14] and cols[0].tolist() == list(range(3, 11))


@pytest.mark.parametrize("alpha,Nv", [(0.3, 10), (0.25, 10), (0.1, 9), (0.5, 7), (1.0, 5)])
def test_5_eq5_eq6(alpha, Nv):
    f = impl("select_per_frame")
    T, start = 4, 2
    g = torch.Generator().manual_seed(Nv)
    a_v = torch.rand(T * Nv, generator=g)
    S = f(a_v, VideoSpan(start, T, Nv), alpha).tolist()
    k = math.ceil(Fraction(str(alpha)) * Nv)
    assert S == sorted(S) and len(S) == T * k
    for t in range(T):
        frame = a_v[t * Nv : (t + 1) * Nv].tolist()
        best = sorted(sorted(range(Nv), key=lambda j: -frame[j])[:k])
        assert [s - start - t * Nv for s in S if start + t * Nv <= s < start + (t + 1) * Nv] == best


def test_6_eq7_eq8():
    f = impl("compress")
    k = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 2, 10, 3)
    v = -k
    rows = torch.tensor([0, 1, 4, 8, 9])  # prefix 0-1, kept video 4, questions 8-9
    K, V = f(k, v, rows)
    assert K[0, 0, :, 0].tolist() == [0, 1, 4, 8, 9] and V[0, 1, :, 2].tolist() == [-0.0, -1, -4, -8, -9]
