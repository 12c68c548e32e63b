"""Three Triton kernels for the decode step of minivtp/fast/__init__.py (fast.triton_step): a decode step is one row, so
what costs is not arithmetic but the number of kernels, and these three do in one launch each what the readable
block does in many (its RMSNorm alone is seven element-wise kernels).

Each rounds where the readable code rounds, so bf16 results are those of model.py (and so of transformers) up to
the order of a float32 sum and the last bit of exp and rsqrt:
    add_rms_norm   h = x + r (rounded to x's dtype), y = weight * round(h / rms(h))    Block's residual + RMSNorm
    rope_to_cache  q, k rotated as apply_rope rounds (x*cos, rotate_half(x)*sin, their sum), k and v written into a
                   StaticKVCache at slot start + step, the position beside them, and the step's causal mask as
                   SDPA adds it (0 / -inf)                              Attention's RoPE, append and mask
    swiglu         round(round(silu(gate)) * up) from the fused gate+up product          MLP's SwiGLU

Imported only by fast.triton_step, so the package needs Triton only for that step (PyTorch's CUDA builds bring it).
On a CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1 before this import): how the tests check them.
Every value is rounded by _round before it is stored, so the interpreter, whose own float32 -> bfloat16 casts
truncate, stores what a GPU stores.
"""

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("minivtp's fused decode step (fast.triton_step) needs Triton, which PyTorch's CUDA builds "
                      "install; `pip install triton`, or decode without it (answer --no-compile)") from e


# Each kernel is launched with Triton's fused multiply-adds off: a product torch rounds before a sum must not be
# fused into it (float16 and float32 too; bfloat16 also rounds on the bits below, which no fusion can undo)
EXACT = dict(enable_fp_fusion=False)


def one_row(name: str, *tensors):
    """The kernels read one row of contiguous memory: say so in one line for anything else."""
    for t in tensors:
        if t is None:
            continue
        if not t.is_contiguous():
            raise ValueError(f"{name}: takes contiguous tensors, got one of shape {tuple(t.shape)} and strides "
                             f"{t.stride()}")
        if t.dim() != 3 or t.shape[:2] != (1, 1):
            raise ValueError(f"{name}: takes one row, shape (1, 1, n), got {tuple(t.shape)} (a decode step, batch 1)")


@triton.jit
def _round(x, dtype: tl.constexpr):  # x rounded to `dtype` and back: where torch's op in that dtype rounds
    if dtype == tl.bfloat16:
        # subtle: written as x.to(bf16).to(float32), the round trip did not survive Triton's compiler: RoPE came
        # out one bf16 step off torch's on an H200, and its PTX for sm_90 sums x*cos and rotate_half(x)*sin in
        # fused multiply-adds, unrounded (tests/test_fast.py reads that PTX). So the rounding to nearest even is
        # done on the bits, where nothing can fold it away
        b = x.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        return tl.where(x == x, b.to(tl.float32, bitcast=True), x)  # NaN stays NaN (its bits would carry over)
    return x.to(dtype).to(tl.float32)


@triton.jit
def _add_rms_norm(X, R, H, W, Y, C, eps, HAS_R: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < C
    dtype = X.dtype.element_ty
    x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_R:  # the residual add of Block.forward, in x's dtype
        x = _round(x + tl.load(R + offs, mask=m, other=0.0).to(tl.float32), dtype)
        tl.store(H + offs, x.to(dtype), mask=m)
    var = tl.sum(x * x, axis=0) / C  # model.rms_norm: the mean of squares in float32
    n = _round(x * tl.rsqrt(var + eps), dtype)  # cast back to the input dtype before the gain
    w = tl.load(W + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(Y + offs, _round(w * n, Y.dtype.element_ty).to(Y.dtype.element_ty), mask=m)


def add_rms_norm(x, r, weight, eps: float):
    """(h, y): h = x + r (x itself when r is None), y = rms_norm(h, weight, eps). x, r: (1, 1, C)."""
    one_row("add_rms_norm", x, r)
    C = x.shape[-1]
    y = torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype))
    h = x if r is None else torch.empty_like(x)
    _add_rms_norm[(1,)](x, x if r is None else r, h, weight, y, C, eps, HAS_R=r is not None,
                        BLOCK=triton.next_power_of_2(C), num_warps=8, **EXACT)
    return h, y


# Triton compiles a kernel apart for integer arguments that are 1 or divisible by 16: the number of slots, the one
# argument that changes from question to question, is left unspecialized, so every cache size runs one compile
@triton.jit(do_not_specialize=["slots"])
def _rope_to_cache(QKV, COS, SIN, Q, K, V, P, MASK, START, STEP, POS, n_heads, n_kv, slots,
                   HALF: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr):
    head = tl.program_id(0)  # 0..H-1: a query head; H..H+Hkv-1: a key head; then the value heads; then the mask
    dtype = QKV.dtype.element_ty
    d = tl.arange(0, HALF)
    slot = tl.load(START) + tl.load(STEP)
    if head < n_heads + n_kv:  # apply_rope: x * cos + rotate_half(x) * sin, each product and the sum rounded
        x1 = tl.load(QKV + head * D + d).to(tl.float32)  # q, k and v heads lie one after another in the product
        x2 = tl.load(QKV + head * D + HALF + d).to(tl.float32)
        c1, c2 = tl.load(COS + d).to(tl.float32), tl.load(COS + HALF + d).to(tl.float32)
        s1, s2 = tl.load(SIN + d).to(tl.float32), tl.load(SIN + HALF + d).to(tl.float32)
        y1 = _round(_round(x1 * c1, dtype) + _round(-x2 * s1, dtype), dtype)
        y2 = _round(_round(x2 * c2, dtype) + _round(x1 * s2, dtype), dtype)
        if head < n_heads:
            tl.store(Q + head * D + d, y1.to(dtype))
            tl.store(Q + head * D + HALF + d, y2.to(dtype))
        else:  # the cache is (1, Hkv, slots, D): head j's row `slot`
            row = (head - n_heads) * slots * D + slot * D
            tl.store(K + row + d, y1.to(dtype))
            tl.store(K + row + HALF + d, y2.to(dtype))
        if head == 0:
            tl.store(P + slot, tl.load(POS))
    elif head < n_heads + 2 * n_kv:
        row = (head - n_heads - n_kv) * slots * D + slot * D
        tl.store(V + row + d, tl.load(QKV + head * D + d))
        tl.store(V + row + HALF + d, tl.load(QKV + head * D + HALF + d))
    else:  # model.causal_mask(pos, cache.pos) as SDPA adds it: 0 where the query may look, -inf elsewhere
        p = tl.load(POS)
        for s0 in range(0, slots, BLOCK_S):
            j = s0 + tl.arange(0, BLOCK_S)
            inside = j < slots
            # subtle: program 0 writes this step's position into P[slot] meanwhile, so the slot is decided without
            # reading it: seen, whatever P[slot] holds at that moment
            seen = tl.where(j == slot, True, tl.load(P + j, mask=inside, other=0) <= p)
            tl.store(MASK + j, tl.where(seen, 0.0, float("-inf")).to(dtype), mask=inside)


def rope_to_cache(qkv, cos, sin, cache, pos, n_heads: int, n_kv: int, head_dim: int):
    """(q, mask). q (1, H, 1, D) with RoPE; k (RoPE) and v written into the StaticKVCache at slot start + step, pos
    beside them; mask (1, slots) in q's dtype, 0 where causal_mask(pos, cache.pos) is True (this step's slot
    included) and -inf elsewhere: what SDPA makes of a boolean mask in four kernels of its own.
    qkv: (1, 1, (H + 2 Hkv) D), the fused projection; cos, sin: (1, D); pos: (1,)."""
    if head_dim % 2 or head_dim & (head_dim - 1):
        raise ValueError(f"rope_to_cache takes a power-of-two head_dim, not {head_dim}")
    one_row("rope_to_cache", qkv)
    if cache.k.shape[0] != 1 or not (cache.k.is_contiguous() and cache.v.is_contiguous()):
        raise ValueError(f"rope_to_cache: takes a contiguous StaticKVCache of batch 1, got {tuple(cache.k.shape)}")
    if qkv.shape[-1] != (n_heads + 2 * n_kv) * head_dim or cos.numel() != head_dim or sin.numel() != head_dim:
        raise ValueError(f"rope_to_cache: qkv {tuple(qkv.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)} do "
                         f"not fit {n_heads} + 2 x {n_kv} heads of {head_dim}")
    slots = cache.k.shape[2]
    q = torch.empty(1, n_heads, 1, head_dim, dtype=qkv.dtype, device=qkv.device)
    mask = torch.empty(1, slots, dtype=qkv.dtype, device=qkv.device)
    _rope_to_cache[(n_heads + 2 * n_kv + 1,)](qkv, cos, sin, q, cache.k, cache.v, cache.pos, mask, cache.start,
                                              cache.step, pos, n_heads, n_kv, slots, HALF=head_dim // 2, D=head_dim,
                                              BLOCK_S=1024, **EXACT)
    return q, mask


@triton.jit
def _swiglu(GU, OUT, F, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < F
    dtype = GU.dtype.element_ty
    g = tl.load(GU + offs, mask=m, other=0.0).to(tl.float32)
    u = tl.load(GU + F + offs, mask=m, other=0.0).to(tl.float32)
    s = _round(g / (1.0 + tl.exp(-g)), dtype)  # F.silu in the tensor's dtype
    tl.store(OUT + offs, _round(s * u, dtype).to(dtype), mask=m)


def swiglu(gate_up):
    """(1, 1, 2F) gate then up, as the fused product gives them -> (1, 1, F): silu(gate) * up."""
    one_row("swiglu", gate_up)
    F = gate_up.shape[-1] // 2
    out = torch.empty(*gate_up.shape[:-1], F, dtype=gate_up.dtype, device=gate_up.device)
    BLOCK = 1024
    _swiglu[(triton.cdiv(F, BLOCK),)](gate_up, out, F, BLOCK=BLOCK, **EXACT)
    return out
