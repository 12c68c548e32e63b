"""An independent float64 reading of the paper, for the tests. It shares no code with minivtp.

`forward64(sd, cfg, tokens, masks)` runs a LLaMA from a transformers state dict in float64, one full sequence,
with one boolean mask (rows x columns, True = may attend) per layer. Pruning is expressed only as masks:

    layers 1..M     causal; generated rows see only the kept prompt rows           (Eq. 7-8: the cache of 1..M)
    layers M+1..L   causal; dropped video rows are invisible to every row            (Sec. 3.2.1: only kept rows go on)

`select64` picks S from the float64 attention of layer M exactly as Eq. 4-6 read.
"""

import math
from fractions import Fraction

import torch


def rope64(x, pos, theta):  # x (H, N, D); split-halves pairs (i, i + D/2), as Hugging Face LLaMA stores them
    D = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos.double()[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def setup64(sd, cfg):
    """(float64 weight getter, H, Hkv, D, RoPE theta, RMSNorm) of a transformers LLaMA config."""
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    theta = cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta
    norm = lambda x, w: x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w  # noqa: E731
    return (lambda k: sd[k].double()), H, Hkv, D, theta, norm


def qkv64(g, p, x, pos, H, Hkv, D, theta, norm):
    """Layer prefix p's queries (H, n, D) and keys (Hkv, n, D), RoPE applied, and values (Hkv, n, D) of rows x."""
    n = x.shape[0]
    h = norm(x, g(p + "input_layernorm.weight"))
    q = rope64((h @ g(p + "self_attn.q_proj.weight").T).view(n, H, D).transpose(0, 1), pos, theta)
    k = rope64((h @ g(p + "self_attn.k_proj.weight").T).view(n, Hkv, D).transpose(0, 1), pos, theta)
    v = (h @ g(p + "self_attn.v_proj.weight").T).view(n, Hkv, D).transpose(0, 1)
    return q, k, v


def finish64(g, p, x, A, V, norm):
    """The rest of the layer: x + (A V) W_o, then x + MLP(norm(x)). A (H, n, m), V (H, m, D)."""
    H, n, D = A.shape[0], A.shape[1], V.shape[-1]
    x = x + (A @ V).transpose(0, 1).reshape(n, H * D) @ g(p + "self_attn.o_proj.weight").T
    h = norm(x, g(p + "post_attention_layernorm.weight"))
    gate, up = h @ g(p + "mlp.gate_proj.weight").T, h @ g(p + "mlp.up_proj.weight").T
    return x + (torch.nn.functional.silu(gate) * up) @ g(p + "mlp.down_proj.weight").T


def logits64(sd, g, x, norm):
    head = sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"]
    return norm(x, g("model.norm.weight")) @ head.double().T


def forward64(sd, cfg, tokens, masks, keep_attention_of=None, record=None):
    """tokens (N,) -> logits (N, V) float64; optionally also the (H, N, N) attention of one layer (1-based).

    `record`, a list, receives per layer (keys, values, received): keys and values (Hkv, N, D) as a cache holds
    them (RoPE applied to keys), `received` (N,) the attention each row got, summed over rows and heads."""
    g, H, Hkv, D, theta, norm = setup64(sd, cfg)
    N = tokens.shape[0]
    pos = torch.arange(N)
    x = g("model.embed_tokens.weight")[tokens]
    attention = None
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        q, k, v = qkv64(g, p, x, pos, H, Hkv, D, theta, norm)
        kr, vr = k.repeat_interleave(H // Hkv, 0), v.repeat_interleave(H // Hkv, 0)
        s = q @ kr.transpose(1, 2) / math.sqrt(D)
        A = torch.softmax(s.masked_fill(~masks[l], float("-inf")), dim=-1)  # (H, N, N)
        if keep_attention_of == l + 1:
            attention = A
        if record is not None:
            record.append((k, v, A.sum(dim=(0, 1))))
        x = finish64(g, p, x, A, vr, norm)
    logits = logits64(sd, g, x, norm)
    return (logits, attention) if keep_attention_of else logits


def causal(N):
    return torch.ones(N, N, dtype=torch.bool).tril()


def select64(sd, cfg, prompt, start, T, Nv, alpha, M, pool="max", ranking="frame"):
    """S by Eq. 4-6 from the float64 attention of layer M over the prompt; 0-based prompt positions.

    ranking="sequence" is Tab. 5's alternative: the top ceil(alpha * T * Nv) of the whole video, one count for all
    frames (not T * ceil(alpha * Nv))."""
    L = cfg.num_hidden_layers
    _, A = forward64(sd, cfg, prompt, [causal(len(prompt))] * L, keep_attention_of=M)
    A = {"max": A.amax(0), "mean": A.mean(0), "min": A.amin(0)}[pool]
    end = start + T * Nv
    a_v = A[end:, start:end].mean(0)  # Eq. 4, then the average over question rows
    if ranking == "sequence":
        scores = a_v.tolist()
        k = math.ceil(Fraction(str(alpha)) * T * Nv)  # exact arithmetic on the decimal alpha
        return sorted(start + j for j in sorted(range(T * Nv), key=lambda j: -scores[j])[:k]), a_v
    k = math.ceil(round(alpha * Nv, 9))
    S = []
    for t in range(T):  # Eq. 5, frame by frame; Eq. 6, back to positions in the whole prompt
        frame = a_v[t * Nv : (t + 1) * Nv].tolist()
        best = sorted(range(Nv), key=lambda j: -frame[j])[:k]
        S += [start + t * Nv + j for j in best]
    return sorted(S), a_v


def pruned_masks(N_prompt, n_total, start, end, S, M, L):
    """The per-layer masks of a pruned run, over prompt + generated rows (n_total rows)."""
    dropped = torch.zeros(n_total, dtype=torch.bool)
    dropped[start:end] = True
    dropped[torch.as_tensor(S, dtype=torch.long)] = False
    early, late = causal(n_total), causal(n_total)
    early[N_prompt:, dropped] = False  # generated rows read the compressed cache of layers 1..M
    late[:, dropped] = False  # after layer M the dropped rows are gone for everyone ...
    gone = dropped.nonzero().flatten()
    late[gone, gone] = True  # ... (each sees itself, so its own softmax stays finite; nobody reads that row)
    return [early] * M + [late] * (L - M)


def layers64(sd, cfg, tokens):
    """The unpruned prefill in float64, layer by layer: [(keys, values, received)] (see forward64's `record`)."""
    out = []
    forward64(sd, cfg, tokens, [causal(tokens.shape[0])] * cfg.num_hidden_layers, record=out)
    return out


def decode64(sd, cfg, caches, tokens, first_pos):
    """Teacher-forced decoding in float64 from per-layer caches [(keys, values)] (Hkv, n, D): the logits after
    each of `tokens`, the first at position `first_pos`. Each token sees every cache row and the tokens before it."""
    g, H, Hkv, D, theta, norm = setup64(sd, cfg)
    n = tokens.shape[0]
    pos = first_pos + torch.arange(n)
    x = g("model.embed_tokens.weight")[tokens]
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        q, k, v = qkv64(g, p, x, pos, H, Hkv, D, theta, norm)
        K = torch.cat([caches[l][0], k], 1).repeat_interleave(H // Hkv, 0)
        V = torch.cat([caches[l][1], v], 1).repeat_interleave(H // Hkv, 0)
        m = caches[l][0].shape[1]
        mask = torch.cat([torch.ones(n, m, dtype=torch.bool), causal(n)], 1)
        A = torch.softmax((q @ K.transpose(1, 2) / math.sqrt(D)).masked_fill(~mask, float("-inf")), dim=-1)
        x = finish64(g, p, x, A, V, norm)
    return logits64(sd, g, x, norm)
