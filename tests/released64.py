"""LLM-VTP's selection as the authors' released code computes it, recomputed in float64 for the tests.

Written from the code of Visual-AI/PruneVid (models/pllava/llama.py, LlamaAttention.forward and LlamaModelVTP;
models/pllava/elastic_cache.py, VTPWindowCache), not from minivtp: it shares no code with the package, only the
float64 LLaMA layer of tests/oracle.py.

    scores      softmax(q k^T / sqrt(D)) of q, k projected before RoPE, no mask        (llama.py:447-448)
    rows        the attention rows after the video, columns of the video              (elastic_cache.py:164)
    pooling     max over heads, then max over the rows                                (elastic_cache.py:125)
    count       int(size * alpha) per segment, torch.topk, indices sorted             (elastic_cache.py:136-150, 177)

Each of the four can be set back to the paper's (rope="after", causal=True, question_pool="mean",
count="ceil"), so every switch alone has its own recomputation.
"""

import math

import torch
from oracle import causal, finish64, qkv64, rope64, setup64


def layer_input64(sd, cfg, tokens, M):
    """The hidden states (N, C) that enter decoder layer M (1-based) of an unpruned causal float64 pass."""
    g, H, Hkv, D, theta, norm = setup64(sd, cfg)
    N = tokens.shape[0]
    pos = torch.arange(N)
    x = g("model.embed_tokens.weight")[tokens]
    for l in range(M - 1):
        p = f"model.layers.{l}."
        q, k, v = qkv64(g, p, x, pos, H, Hkv, D, theta, norm)
        k, v = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        A = torch.softmax((q @ k.transpose(1, 2) / math.sqrt(D)).masked_fill(~causal(N), float("-inf")), dim=-1)
        x = finish64(g, p, x, A, v, norm)
    return x


def attention64(sd, cfg, tokens, M, rope="before", causal_mask=False):
    """(H, N, N) attention of layer M. rope="before": q_proj and k_proj outputs as they are, before
    apply_rotary_pos_emb; causal_mask=False: the softmax over every key."""
    g, H, Hkv, D, theta, norm = setup64(sd, cfg)
    x = layer_input64(sd, cfg, tokens, M)
    N, p = x.shape[0], f"model.layers.{M - 1}."
    h = norm(x, g(p + "input_layernorm.weight"))
    q = (h @ g(p + "self_attn.q_proj.weight").T).view(N, H, D).transpose(0, 1)  # (H, N, D)
    k = (h @ g(p + "self_attn.k_proj.weight").T).view(N, Hkv, D).transpose(0, 1)  # (Hkv, N, D)
    if rope == "after":
        pos = torch.arange(N)
        q, k = rope64(q, pos, theta), rope64(k, pos, theta)
    k = k.repeat_interleave(H // Hkv, 0)  # the released code has Hkv = H (Vicuna-7B); a GQA model repeats
    s = q @ k.transpose(1, 2) / math.sqrt(D)
    if causal_mask:
        s = s.masked_fill(~causal(N), float("-inf"))
    return torch.softmax(s, dim=-1)


def segments_topk(a, static_sizes, dynamic_sizes, window_sizes, keep):
    """VTPWindowCache.process_attention's loop: per segment the static part's top keep(size), then each of the
    window's frames' top keep(frame size); video-relative indices, in the order the loop appends them."""
    out, start = [], 0
    for static, dynamic, window in zip(static_sizes, dynamic_sizes, window_sizes):
        seg = a[start : start + static + dynamic]
        out += (torch.topk(seg[:static], k=keep(static)).indices + start).tolist()
        frames = seg[static:].view(window, -1)
        per = frames.shape[-1]
        idx = torch.topk(frames, k=keep(per), dim=-1).indices
        for i in range(window):
            out += (idx[i] + start + static + per * i).tolist()
        start += static + dynamic
    return out


def select_released64(sd, cfg, tokens, start, T, Nv, alpha, M, rope="before", causal_mask=False,
                      question_pool="max", count="floor"):
    """(S as sorted prompt positions, a_v (T*Nv,) float64): the released rule, each switch as given.

    The video is T segments of one frame each (static size 0, one dynamic frame of Nv), the case where
    PruneVid's static/dynamic split merges nothing: Eq. 5's per-frame ranking."""
    A = attention64(sd, cfg, tokens, M, rope, causal_mask)  # (H, N, N)
    end = start + T * Nv
    A = A[:, end:, start:end]  # rows after the video x video columns
    A = A.max(dim=0)[0]  # heads by a max (the paper's default too)
    a_v = A.max(dim=0)[0] if question_pool == "max" else A.mean(dim=0)
    if count == "floor":
        keep = lambda n: int(n * alpha)  # noqa: E731
    else:
        keep = lambda n: max(1, math.ceil(round(alpha * n, 9))) if n else 0  # noqa: E731
    S = segments_topk(a_v, [0] * T, [Nv] * T, [1] * T, keep)
    return sorted(start + j for j in S), a_v
