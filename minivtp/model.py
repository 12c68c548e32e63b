"""A LLaMA-style decoder in one file, read top to bottom.

config -> RMSNorm -> RoPE -> KV cache -> attention -> MLP -> block -> transformer.

This is the language model that PLLaVA and Tarsier (and Vicuna before them) are built on. Nothing here knows
about video or pruning: LLM-VTP lives in `vtp.py` and only uses what this file exposes (the layers, their
caches, the attention weights of one layer).

Dimensions, named as in the paper and used in every shape comment:
    B   batch
    N   rows in the sequence being processed (prompt rows, or 1 when decoding)
    Nk  rows of keys a query can see (cache length after the write)
    C   channels (hidden size)
    H   query heads, Hkv key/value heads (Hkv < H is grouped-query attention)
    D   head dim
    F   MLP hidden size
    V   vocabulary size
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:  # read from a Hugging Face config.json by minivtp/hf_config.py, which maps their names to these
    vocab_size: int = 32000
    dim: int = 4096  # C
    n_layers: int = 32  # L in the paper
    n_heads: int = 32  # H
    n_kv_heads: int = 32  # Hkv; Vicuna-7B has no grouped-query attention, newer LLaMAs do
    hidden_dim: int = 11008  # F
    head_dim: int = 0  # D; 0 means dim // n_heads (Hugging Face writes it explicitly since v4.45)
    norm_eps: float = 1e-5  # Vicuna-7B v1.5 uses 1e-5; transformers' tiny defaults use 1e-6
    rope_theta: float = 10000.0  # the LLaMA-1/2 base; used when the config names none
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": "linear" | "llama3", ...}; empty = plain RoPE
    max_seq_len: int = 4096  # max_position_embeddings: the longest prompt + answer we accept
    tie_embeddings: bool = False  # output projection shares the embedding matrix
    attention_bias: bool = False
    mlp_bias: bool = False
    fused_attention: bool = True  # F.scaled_dot_product_attention; False: the math written out (same numbers)
    qkv_bias: bool = False  # bias on q, k and v but not o: Qwen2's one change to LLaMA's layer
    qk_norm: bool = False  # Qwen3: each head's q and k RMS-normalised (over D) before RoPE
    mrope_section: tuple = ()  # M-RoPE (Qwen2.5-VL, Qwen3-VL): how many of the D/2 frequencies turn with t, h, w
    mrope_layout: str = "chunked"  # "chunked" t..t h..h w..w (Qwen2.5-VL); "interleaved" t h w t h w (Qwen3-VL)

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if (kind := self.rope_scaling.get("rope_type", "default")) not in ("default", "linear", "llama3"):
            raise ValueError(f"rope_type {kind!r} is not supported (minivtp knows default, linear, llama3)")
        if self.mrope_section and (sum(self.mrope_section) != self.head_dim // 2 or len(self.mrope_section) != 3
                                   or self.mrope_layout not in ("chunked", "interleaved")):
            raise ValueError(f"mrope_section={list(self.mrope_section)} must be 3 numbers (t, h, w) adding up to "
                             f"head_dim/2 = {self.head_dim // 2}, mrope_layout {self.mrope_layout!r} 'chunked' or "
                             "'interleaved'")


# ----------------------------------------------------------------------------------------------------------------
# RMSNorm


def rms_norm(x, weight, eps: float):
    # The mean of squares is taken in float32 whatever the weights' dtype: in bf16 it loses digits.
    # Like Hugging Face, I cast back to the input dtype before the gain, so bf16 runs round the same way.
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., C) -> (..., C)
        return rms_norm(x, self.weight, self.eps)


# ----------------------------------------------------------------------------------------------------------------
# RoPE


def rope_inv_freq(cfg: Config, device=None) -> torch.Tensor:
    """The D/2 rotation speeds. Plain RoPE: theta^(-2i/D). Scaled variants bend the slow ones."""
    D = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))  # (D/2,)
    if (kind := cfg.rope_scaling.get("rope_type", "default")) == "linear":  # positions divided by `factor`, which is the same as slower frequencies
        inv_freq = inv_freq / cfg.rope_scaling["factor"]
    elif kind == "llama3":  # long wavelengths slowed by `factor`, short ones kept, a smooth ramp between
        s = cfg.rope_scaling
        factor, lo, hi, old_len = (s[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                   "original_max_position_embeddings"))
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - lo) / (hi - lo)
        ramp = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
        in_between = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
        inv_freq = torch.where(in_between, ramp, inv_freq)
    return inv_freq


def mrope_axes(cfg: Config, device=None) -> torch.Tensor:
    """M-RoPE: which of a token's three positions (0: t, 1: h, 2: w) turns each of the D/2 frequencies. (D/2,)"""
    t, h, w = cfg.mrope_section
    if cfg.mrope_layout == "chunked":  # Qwen2.5-VL: the first t frequencies read t, the next h read h, the last w
        return torch.tensor([0] * t + [1] * h + [2] * w, device=device)
    j = torch.arange(t + h + w, device=device)  # Qwen3-VL: t h w t h w ..., until h's and w's counts run out
    return torch.where((j % 3 == 1) & (j < 3 * h), 1, torch.where((j % 3 == 2) & (j < 3 * w), 2, 0))


def rope_cos_sin(cfg: Config, pos: torch.Tensor):
    """cos and sin for each position. `pos` is explicit: after pruning, positions skip the dropped rows.

    pos is (N,), or (3, N) under M-RoPE: each token's (t, h, w); a text token's three are equal."""
    if pos.dim() == 1:
        freqs = pos.float()[:, None] * rope_inv_freq(cfg, pos.device)[None, :]  # (N, D/2)
    else:
        # subtle: M-RoPE splits the D/2 frequencies between three positions: frequency j turns with t, h or w,
        # as mrope_axes says. A text token has t = h = w, so its rotation is exactly 1D RoPE's at that position.
        freqs = pos.float()[:, :, None] * rope_inv_freq(cfg, pos.device)  # (3, N, D/2): every axis at every speed
        axes = mrope_axes(cfg, pos.device)  # (D/2,)
        freqs = freqs.gather(0, axes.expand(1, pos.shape[1], -1))[0]  # (N, D/2): frequency j from axis axes[j]
    # subtle: Hugging Face LLaMA checkpoints use the *split-halves* layout: the pair rotated together is
    # (x[i], x[i + D/2]), not the interleaved (x[2i], x[2i+1]) of the RoPE paper. Their q/k weights were
    # permuted to match at conversion time, so interleaving here would silently give a different model.
    freqs = torch.cat([freqs, freqs], dim=-1)  # (N, D)
    return freqs.cos(), freqs.sin()


def rotate_half(x):  # (..., D): (x1, x2) -> (-x2, x1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):  # x (B, H, N, D), cos/sin (N, D)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------------------------------------------
# KV cache

EMPTY = torch.iinfo(torch.long).max  # the position of a slot nothing has been written to


class KVCache:
    """One layer's keys and values, preallocated for `max_len` rows. Two operations: `append` rows after the last
    filled one, and `keep` some rows (Eq. 7-8).

    Each slot remembers the position (for RoPE and the causal mask) of what it holds. Before pruning slot ==
    position; after `keep` the kept rows are packed to the front, so slot 3 may hold position 57. Nothing
    downstream infers a position from a slot.

    >>> cache = KVCache(batch=1, n_kv_heads=2, max_len=8, head_dim=4)
    >>> k = v = torch.randn(1, 2, 5, 4)
    >>> _ = cache.append(k, v, torch.arange(5))         # prompt rows 0..4 in slots 0..4
    >>> cache.keep(torch.tensor([0, 3, 4]))             # Eq. 7-8: keep rows 0, 3, 4
    >>> cache.length, cache.pos[:3].tolist()
    (3, [0, 3, 4])
    >>> _ = cache.append(k[:, :, :1], v[:, :, :1], torch.tensor([5]))   # the next token: slot 3, position 5
    >>> cache.pos[:4].tolist()
    [0, 3, 4, 5]
    """

    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype=torch.float32, device=None):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.full((max_len,), EMPTY, device=device)
        self.length = 0  # slots 0..length-1 are filled

    def append(self, k, v, pos):
        """Write N rows after the last filled one; return every filled row (keys, values, their positions)."""
        start, n = self.length, k.shape[2]
        if start + n > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: writing {n} rows after row {start} into {self.k.shape[2]} slots")
        self.k[:, :, start : start + n] = k
        self.v[:, :, start : start + n] = v
        self.pos[start : start + n] = pos
        self.length = start + n
        return self.k[:, :, : self.length], self.v[:, :, : self.length], self.pos[: self.length]  # (B, Hkv, Nk, D) x2, (Nk,)

    def keep(self, rows: torch.Tensor):
        """Eq. 7-8: keep only the given filled slots (sorted), packed to the front; the rest is emptied."""
        n = rows.numel()
        # index_select copies first, so writing into the front of the same buffer is safe
        self.k[:, :, :n] = self.k.index_select(2, rows)
        self.v[:, :, :n] = self.v.index_select(2, rows)
        self.pos[:n] = self.pos.index_select(0, rows)
        self.pos[n:] = EMPTY
        self.length = n


# ----------------------------------------------------------------------------------------------------------------
# Attention: the math written out, and the fused kernel beside it


def repeat_kv(x, n_rep: int):  # (B, Hkv, Nk, D) -> (B, H, Nk, D): each kv head serves n_rep query heads
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def causal_mask(q_pos, k_pos):  # (N,), (Nk,) -> (N, Nk) bool, True where the query may look
    # Eq. 3's m: row i sees column j iff j is not in its future. Written with positions, not indices,
    # so it stays right after pruning and for cache slots that were never written (position EMPTY).
    return k_pos[None, :] <= q_pos[:, None]


def attention_weights(q, k, mask):
    """Eq. 3: A = Softmax(Q K^T / sqrt(D) + m), in float32. q (B, H, N, D), k (B, H, Nk, D) -> (B, H, N, Nk).

    The paper writes sqrt(C); per head the product runs over the head's D channels, and D is what LLaMA divides by."""
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, N, Nk)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1)


def attention_manual(q, k, v, mask):  # the readable twin of the fused kernel
    A = attention_weights(q, k, mask)  # (B, H, N, Nk) float32
    return (A @ v.float()).to(q.dtype)  # (B, H, N, D)


def attention_fused(q, k, v, mask, causal=False):
    # subtle: `causal=True` only for queries and keys that are the same rows in increasing position (a prefill
    # into an empty cache): then the mask is the lower triangle, and the kernel skips the upper half unread.
    if causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, N, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, D)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.attention_bias)
        self.fused = cfg.fused_attention  # chosen once, as nanoGPT chooses flash: the kernel, or the math above
        self.qk_norm = cfg.qk_norm  # Qwen3: q and k of each head RMS-normalised, one gain of D channels each
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps), RMSNorm(cfg.head_dim, cfg.norm_eps)

    def heads(self, y, n):  # (B, N, n*D) -> (B, n, N, D)
        B, N, _ = y.shape
        return y.view(B, N, n, self.head_dim).transpose(1, 2)

    def query(self, x, cos, sin):  # (B, N, C) -> (B, H, N, D), RoPE applied
        return apply_rope(self.q_heads(self.wq(x)), cos, sin)

    def q_heads(self, q):  # (B, N, H*D) -> (B, H, N, D) before RoPE; Qwen3 normalises each head
        return self.q_norm(self.heads(q, self.n_heads)) if self.qk_norm else self.heads(q, self.n_heads)

    def k_heads(self, k):  # (B, N, Hkv*D) -> (B, Hkv, N, D) before RoPE; Qwen3 normalises each head
        return self.k_norm(self.heads(k, self.n_kv_heads)) if self.qk_norm else self.heads(k, self.n_kv_heads)

    def project(self, x):  # Eq. 2: Q = X W_Q, K = X W_K, V = X W_V -> (B, N, H*D), (B, N, Hkv*D) x2
        return self.wq(x), self.wk(x), self.wv(x)

    def forward(self, x, cos, sin, pos, cache=None):
        B, N, C = x.shape
        q, k, v = self.project(x)
        q = apply_rope(self.q_heads(q), cos, sin)  # (B, H, N, D): RoPE turns positions into rotations
        k = apply_rope(self.k_heads(k), cos, sin)  # (B, Hkv, N, D)
        v = self.heads(v, self.n_kv_heads)  # (B, Hkv, N, D)
        k_pos = pos
        if cache is not None:  # this layer's keys so far, these N rows included
            k, v, k_pos = cache.append(k, v, pos)  # (B, Hkv, Nk, D) x2, (Nk,)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, Nk, D)
        mask = causal_mask(pos, k_pos)  # (N, Nk)
        if self.fused:
            # the keys are exactly these N rows (no cache, or a prefill into an empty one): the mask is a triangle
            out = attention_fused(q, k, v, mask, causal=k_pos.shape[0] == N and N > 1)  # (B, H, N, D)
        else:
            out = attention_manual(q, k, v, mask)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(B, N, self.n_heads * self.head_dim)  # (B, N, H*D)
        return self.wo(out)  # (B, N, C)


# ----------------------------------------------------------------------------------------------------------------
# MLP and block


def swiglu(gate, up):  # (B, N, F) x2 -> (B, N, F)
    return F.silu(gate) * up


class MLP(nn.Module):  # SwiGLU: down(silu(gate(x)) * up(x))
    def __init__(self, cfg: Config):
        super().__init__()
        self.w_gate = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.w_up = nn.Linear(cfg.dim, cfg.hidden_dim, bias=cfg.mlp_bias)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x):  # (B, N, C) -> (B, N, F) -> (B, N, C)
        return self.w_down(swiglu(self.w_gate(x), self.w_up(x)))


class Block(nn.Module):  # pre-norm: x + attn(norm(x)), then x + mlp(norm(x))
    def __init__(self, cfg: Config):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, pos, cache=None):  # (B, N, C) -> (B, N, C)
        x = x + self.attn(self.attn_norm(x), cos, sin, pos, cache)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------------------------------------------
# Transformer


class Transformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    def rope(self, pos):  # (N,) or (3, N) -> cos, sin (N, D), computed once and shared by every layer
        cos, sin = rope_cos_sin(self.cfg, pos)  # float32, then in the weights' dtype like q and k
        return cos.to(self.embed.weight.dtype), sin.to(self.embed.weight.dtype)

    def head(self, x):  # (B, N, C) -> (B, N, V) float32 logits
        return self.output(self.norm(x)).float()

    def new_caches(self, batch=1, max_len=None):
        """One empty KVCache per layer, in the weights' dtype and device."""
        w = self.embed.weight
        max_len = max_len or self.cfg.max_seq_len
        return [KVCache(batch, self.cfg.n_kv_heads, max_len, self.cfg.head_dim, w.dtype, w.device)
                for _ in self.layers]

    def forward_layers(self, x, cos, sin, pos, caches=None, start=0, stop=None, added=None):
        """Layers start+1..stop (all of them by default) on x (B, N, C) at positions `pos`; layer i writes its
        keys and values into caches[i] when caches are given. The one loop over the decoder layers.

        `added` {i: (N, C)}: rows added to the hidden states after layer i+1 (Qwen3-VL's DeepStack: visual
        features at the video rows, zeros elsewhere)."""
        stop = len(self.layers) if stop is None else stop
        for i in range(start, stop):
            x = self.layers[i](x, cos, sin, pos, None if caches is None else caches[i])  # (B, N, C)
            if added is not None and i in added:
                x = x + added[i].to(x.dtype)
        return x

    def forward_embeds(self, x, pos=None, caches=None, rope_pos=None):  # (B, N, C) -> (B, N, V)
        """`pos` (N,) orders the rows (the causal mask, the caches); `rope_pos`, what RoPE rotates by, is the same
        unless given: (3, N) under M-RoPE, where a token's position is not its row."""
        pos = torch.arange(x.shape[1], device=x.device) if pos is None else pos  # (N,)
        cos, sin = self.rope(pos if rope_pos is None else rope_pos)
        return self.head(self.forward_layers(x, cos, sin, pos, caches))

    def forward(self, tokens):
        """The plain model: tokens (B, N) -> logits (B, N, V). No cache, no pruning."""
        return self.forward_embeds(self.embed(tokens))
