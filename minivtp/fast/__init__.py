"""The fast path on a GPU: everything here computes what model.py and generate.py compute, only faster.

Nothing in the readable core imports this file. It plugs in at one visible point, the `decoder` of generate
(gpt-fast wraps its readable functions at the call site in the same way):

    from minivtp import fast
    fast.prepare(model)                       # once: q+k+v as one matmul, the decoder blocks compiled
    decoder = fast.FastDecoder(model, step="tuned")
    for embeds, video in questions:           # one capture per size, not per question
        out = generate(model, embeds, 5, video=video, alpha=0.1, layer=10, decoder=decoder)

What each piece buys, measured with bench/ on an H100 and an H200 (bench/RESULTS.md has the tables and the
commits that measured them):
- A decode step reads every weight once for one row. Launched from Python it runs hundreds of small kernels
  and the GPU waits on the CPU (26.8 ms a token at Vicuna-7B shape on the H200, eager). GraphDecode captures
  the step once in a CUDA graph and replays it: one launch a token. A graph needs fixed shapes, hence
  StaticKVCache: the step reads its whole buffer, the slots not yet written masked by their position EMPTY.
- After layer M a pruned prompt has a few hundred rows, so layers M+1..L are launch-bound too: PrefillTail
  replays them as one graph, the rows padded to a bucket.
- fuse_qkv, fuse_gate_up: q, k and v from one matmul three times as wide, gate and up from one twice as wide,
  which keeps more of the GPU busy when the rows are few (a pruned prompt, a decode step).
- compile_blocks: inside a block, the norms, RoPE, the cache write, the mask and SwiGLU become a few fused
  kernels around the matmuls (one compile serves all L layers: the same code on weights of the same shapes).
- tuned_block: the decode step's blocks compiled apart, with Inductor's autotuned matrix-vector products
  (1.31-1.34x -> 1.17-1.25x of the bandwidth floor on an H100; 1.29x on an H200). eval's decode step.
- triton_step: the decode step with its element-wise work in three Triton kernels (minivtp/fast/triton_kernels.py),
  the products left to cuBLAS: 373 kernels a step instead of 1,468, 4.36 ms a token at Vicuna-7B shape on an
  H200 (1.34x the floor) against 6.45 uncompiled, and nothing for torch to trace. answer's decode step: compiled
  by torch instead, even warm from its on-disk cache, the command took 25 s where it takes 14.
"""

import functools
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from minivtp.generate import decode_one_token
from minivtp.model import (
    EMPTY,
    MLP,
    Attention,
    Block,
    KVCache,
    attention_manual,
    causal_mask,
    repeat_kv,
    swiglu,
)

# torch.compile's mode for the decode step on a GPU: time Triton's kernels against cuBLAS for every weight shape
# and keep the faster (our own CUDA graph captures the result, so not torch's graphs as well)
AUTOTUNE = "max-autotune-no-cudagraphs"

# subtle: an eager decode's caches grow by a row at every step, and given a mask PyTorch may choose cuDNN's
# attention on a GPU, which builds a plan for every new number of keys: tens of ms each time the process first
# meets that number, so a one-shot question paid it at every step. The other kernels take any length as it comes.
GROWING_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# ----------------------------------------------------------------------------------------------------------------
# What changes in the model: fused projections, compiled blocks


class FusedQKVAttention(Attention):
    """Attention whose Eq. 2 is one matmul: X [W_Q; W_K; W_V], split into the same three. See fuse_qkv."""

    def project(self, x):  # (B, N, C) -> (B, N, H*D), (B, N, Hkv*D) x2
        sizes = (self.wq.out_features, self.wk.out_features, self.wv.out_features)
        return F.linear(x, *self.wqkv).split(sizes, dim=-1)


def fuse_qkv(model):
    """q, k and v as one matmul in every layer: the same numbers from one product three times as wide.

    wq, wk and wv become views of the fused weight, so nothing is stored twice, the state dict keeps its keys and
    `Attention.query` (LLM-VTP's scores) still reads wq. Run it after loading and moving the model: a later
    `.to()` would copy the views apart from the fused weight. Returns the model."""
    for layer in model.layers:
        a = layer.attn
        if isinstance(a, FusedQKVAttention):
            continue
        a.wqkv = fused_views((a.wq, a.wk, a.wv))
        a.__class__ = FusedQKVAttention  # the same module, its projection now the one matmul above
    return model


class FusedMLP(MLP):
    """The SwiGLU MLP whose gate and up products are one matmul, X [W_gate; W_up], split in two. See fuse_gate_up."""

    def forward(self, x):  # (B, N, C) -> (B, N, 2F) -> (B, N, F) x2 -> (B, N, C)
        gate, up = F.linear(x, *self.w_gate_up).split(self.w_gate.out_features, dim=-1)
        return self.w_down(swiglu(gate, up))


def fused_views(linears):
    """One weight (and bias) made of the linears' rows, each linear's parameters now views of its rows of it:
    nothing is stored twice and the state dict keeps its keys. Returns (weight, bias or None)."""
    with torch.no_grad():
        weight = torch.cat([lin.weight for lin in linears])  # (sum of out_features, C)
        bias = None if linears[0].bias is None else torch.cat([lin.bias for lin in linears])
    start = 0
    for lin in linears:  # each one's rows of the fused weight, as a view
        rows = slice(start, start + lin.out_features)
        lin.weight = torch.nn.Parameter(weight[rows], requires_grad=False)
        if bias is not None:
            lin.bias = torch.nn.Parameter(bias[rows], requires_grad=False)
        start += lin.out_features
    return weight, bias


def fuse_gate_up(model):
    """The MLP's gate and up products as one matmul in every layer, as fuse_qkv does for q, k and v: the same
    numbers. After layer M a pruned prompt has a few hundred rows, and one product twice as wide fills more of the
    GPU's multiprocessors than two. Run it after loading and moving the model. Returns the model."""
    for layer in model.layers:
        m = layer.mlp
        if isinstance(m, FusedMLP):
            continue
        m.w_gate_up = fused_views((m.w_gate, m.w_up))
        m.__class__ = FusedMLP  # the same module, its gate and up now the one matmul above
    return model


def compile_blocks(model, mode=None):
    """torch.compile every decoder block. The L blocks run the same code on weights of the same shapes, so one
    compile serves all of them (seconds, not the minute a whole-model compile takes), and a second size of prompt
    or cache compiles once more with the sizes left symbolic, then no more. `mode` is torch.compile's."""
    for layer in model.layers:
        layer.compile(mode=mode)
    return model


def prepare(model, compile: bool = True):
    """What the fast path changes in a model on a GPU, once per process: fuse_qkv and fuse_gate_up, and with
    `compile` compile_blocks. `python -m minivtp eval` does all of it on CUDA, `answer` the fusing only (its
    prefill runs once; its decode step runs through three Triton kernels, FastDecoder(step="triton")). Returns the
    model."""
    fuse_gate_up(fuse_qkv(model))
    return compile_blocks(model) if compile else model


# ----------------------------------------------------------------------------------------------------------------
# A cache of fixed size, and the decode step on it


class StaticKVCache(KVCache):
    """The KV cache for CUDA graphs: `append` writes at slot start + step, both tensors, and returns the whole
    buffer, so the kernels of a decode step never depend on a Python number and the step can be captured once
    and replayed. GraphDecode gives every layer's cache the same `step` tensor and sets it before each replay.
    Slots not yet written hold position EMPTY, which the causal mask hides.

    Made from a filled KVCache after prefill, with exactly the slots the rest of the answer needs: after pruning
    a static decode reads cache_len + new tokens slots, not the unpruned prompt's."""

    def __init__(self, batch, n_kv_heads, max_len, head_dim, dtype=torch.float32, device=None):
        super().__init__(batch, n_kv_heads, max_len, head_dim, dtype, device)
        # tensors, not ints: a graph captured once reads them at every replay, so the next question can reuse it
        self.start = torch.zeros(1, dtype=torch.long, device=device)
        self.step = torch.zeros(1, dtype=torch.long, device=device)

    @classmethod
    def from_cache(cls, cache: KVCache, max_len: int) -> "StaticKVCache":
        B, Hkv, _, D = cache.k.shape
        return cls(B, Hkv, max_len, D, cache.k.dtype, cache.k.device).load(cache)

    def load(self, cache: KVCache) -> "StaticKVCache":
        """Take over a filled cache's rows (in place: the buffers a captured graph reads stay the same)."""
        n = cache.length
        if n > self.k.shape[2]:
            raise ValueError(f"cannot fit a cache holding {n} rows into {self.k.shape[2]} slots")
        self.k[:, :, :n], self.v[:, :, :n], self.pos[:n] = cache.k[:, :, :n], cache.v[:, :, :n], cache.pos[:n]
        self.pos[n:] = EMPTY
        self.start.fill_(n)
        self.length = n
        return self

    def append(self, k, v, pos):
        slot = self.start + self.step  # (1,): tensors, so a replayed graph writes where the step says
        self.k.index_copy_(2, slot, k)
        self.v.index_copy_(2, slot, v)
        self.pos.index_copy_(0, slot, pos)
        return self.k, self.v, self.pos  # (B, Hkv, max_len, D) x2, (max_len,)


@torch.no_grad()
def static_step(model, token, pos, caches):
    """generate.decode_one_token on StaticKVCaches, the position a (1,) tensor: the same kernels at every step."""
    return model.forward_embeds(model.embed(token.view(1, 1)), pos, caches)[0, -1]


def decode_block(block, x, cos, sin, pos, cache):
    """One decoder block in the decode step, Block.forward itself. A function of its own so that torch.compile
    counts its compiles apart from the blocks' (compile_blocks): torch keeps at most
    torch._dynamo.config.recompile_limit (8) compiled versions of one function and then runs it eagerly, and the
    prefill's sizes, the decode's and a second model's dtype would otherwise share those eight (seen on an H100:
    8.11 ms a token instead of 5.3)."""
    return Block.forward(block, x, cos, sin, pos, cache)


@functools.cache
def tuned_block(mode=None):
    """decode_block through torch.compile for the decode step, made once per process and mode.

    Tuned with AUTOTUNE, Inductor writes the step's matrix-vector products as reductions of its own and folds the
    norm before each into it. With the blocks themselves compiled that way the prefill's products got slower
    (0.69-0.74 of the FLOPs ratio), hence a compile for the decode alone."""
    return torch.compile(decode_block, mode=mode)


@torch.no_grad()
def tuned_step(model, token, pos, caches):
    """static_step with each block through tuned_block() (AUTOTUNE on a GPU). StaticKVCaches only.

    The loop over layers is written here once more, not model.forward_layers, because each block must go through
    the compiled decode_block, not through its own (compiled) forward."""
    run = tuned_block(AUTOTUNE if token.is_cuda else None)
    x = model.embed(token.view(1, 1))  # (1, 1, C)
    cos, sin = model.rope(pos)
    for block, cache in zip(model.layers, caches):
        x = run(block, x, cos, sin, pos, cache)
    return model.head(x)[0, -1]


def triton_fits(model) -> bool:
    """Whether triton_step's kernels take this model's shapes: RoPE's kernel a power-of-two head_dim."""
    D = model.cfg.head_dim
    return D % 2 == 0 and D & (D - 1) == 0


@torch.no_grad()
def triton_step(model, token, pos, caches):
    """static_step with the element-wise work of each block in three Triton kernels (minivtp/fast/triton_kernels.py):
    the residual add and RMSNorm as one, RoPE, the cache write and the step's mask as one, SwiGLU as one. The products stay
    PyTorch's (cuBLAS). What it saves is kernels, not bytes: at Vicuna-7B shape on the H200 the uncompiled step
    is about 46 kernels a layer, this one about 12, and unlike tuned_step nothing is traced or compiled by torch,
    so a one-shot process pays no compile (Triton compiles the three kernels once per machine and keeps them on
    disk). Needs fuse_qkv and fuse_gate_up (fast.prepare) and StaticKVCaches.

    The same computation as Block.forward, regrouped: each layer begins by adding the previous layer's MLP output
    to the residual stream (h = x + mlp), where Block ends with it."""
    from minivtp.fast import triton_kernels as K

    x, r = model.embed(token.view(1, 1)), None  # (1, 1, C); r: what the previous block adds to x
    cos, sin = model.rope(pos)  # (1, D)
    for block, cache in zip(model.layers, caches):
        a, mlp = block.attn, block.mlp
        if not (isinstance(a, FusedQKVAttention) and isinstance(mlp, FusedMLP)):
            raise ValueError("triton_step needs fused q+k+v and gate+up products: fast.prepare(model, compile=False)")
        x, y = K.add_rms_norm(x, r, block.attn_norm.weight, block.attn_norm.eps)
        q, bias = K.rope_to_cache(F.linear(y, *a.wqkv), cos, sin, cache, pos, a.n_heads, a.n_kv_heads, a.head_dim)
        n_rep = a.n_heads // a.n_kv_heads
        k, v = repeat_kv(cache.k, n_rep), repeat_kv(cache.v, n_rep)  # the whole static buffer, EMPTY slots masked
        if a.fused:  # the kernel's 0 / -inf mask, which SDPA adds as it is
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (1, H, 1, D)
        else:
            out = attention_manual(q, k, v, causal_mask(pos, cache.pos))
        x, y = K.add_rms_norm(x, a.wo(out.view(1, 1, -1)), block.mlp_norm.weight, block.mlp_norm.eps)
        r = mlp.w_down(K.swiglu(F.linear(y, *mlp.w_gate_up)))
    x, y = K.add_rms_norm(x, r, model.norm.weight, model.norm.eps)
    return model.output(y).float()[0, -1]


# ----------------------------------------------------------------------------------------------------------------
# CUDA graphs


def capture(fn, pool=None):
    """fn() captured in a CUDA graph, after two warm-up runs off the default stream as capture requires.
    Returns (the graph, fn's output: the buffer every replay overwrites). `pool`: a memory pool to share."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


class GraphDecode:
    """The decode step captured once in a CUDA graph, then replayed: one launch per token instead of hundreds.

    Built at the first decode step with that step's real inputs, so the warm-up's cache writes are the ones
    the replay makes anyway. On a CPU there are no graphs and it simply calls the step.
    """

    def __init__(self, model, caches, token, pos: int, step: int = 0, kind: str = "plain"):
        dev = caches[0].k.device  # caches: StaticKVCaches
        self.run = STEPS[kind]
        self.model, self.caches = model, caches
        self.token = token.view(1).clone()
        self.pos = torch.tensor([pos], device=dev)
        self.step = torch.tensor([step], device=dev)
        for cache in caches:  # one step tensor for every layer's cache, set before each replay
            cache.step = self.step
        if kind == "tuned":  # the caches' length a symbol from the first compile: one compile serves every size
            import torch._dynamo as dynamo
            for cache in caches:
                for t, dim in ((cache.k, 2), (cache.v, 2), (cache.pos, 0)):
                    dynamo.maybe_mark_dynamic(t, dim)
        self.graph = None
        if dev.type == "cuda":
            self.graph, self.logits = capture(lambda: self.run(model, self.token, self.pos, caches))

    def __call__(self, token, pos: int, step: int):
        self.token.copy_(token.view(1))
        self.pos.fill_(pos)
        self.step.fill_(step)
        if self.graph is None:
            return self.run(self.model, self.token, self.pos, self.caches)
        self.graph.replay()
        return self.logits.clone()  # the graph overwrites its output buffer at the next replay


class PrefillTail:
    """Layers first+1..L of a pruned prefill for `rows` rows, captured once in a CUDA graph and replayed.

    The row count is fixed from layer M on, so the rest of the prefill has static shapes and can be one graph.
    Shorter prompts are padded: real rows first, then padding rows at positions after every real one. The mask
    is causal, so no real row ever looks at a padding row, and the real rows' outputs and cache rows are those
    of the loop. On a CPU there are no graphs and the same padded function simply runs. The graph writes into
    caches of its own (at Vicuna-7B shape, 27 layers x 2 x 4,096 x 2 bytes = 0.44 MB per row), which it hands
    to the question in place of its caches of layers first+1..L: copying them would cost 0.7 ms (a0.1 M5).
    """

    def __init__(self, model, first: int, rows: int, pool=None):
        cfg, w = model.cfg, model.embed.weight
        self.model, self.first, self.rows = model, first, rows
        self.x = torch.zeros(1, rows, cfg.dim, dtype=w.dtype, device=w.device)  # the graph's input rows
        self.pos = torch.arange(rows, device=w.device)  # and their positions
        self.pad = torch.arange(1, rows + 1, device=w.device)  # padding positions, after the last real one
        self.caches = [KVCache(1, cfg.n_kv_heads, rows, cfg.head_dim, w.dtype, w.device) for _ in model.layers[first:]]
        self.graph = None
        if w.device.type == "cuda":
            self.graph, self.out = capture(self.run, pool)

    def run(self):  # (1, rows, C): prefill's layers first+1..L, into this object's caches
        for cache in self.caches:
            cache.length = 0  # every replay writes the same slots again
        cos, sin = self.model.rope(self.pos)
        return self.model.forward_layers(self.x, cos, sin, self.pos, [None] * self.first + self.caches, self.first)

    def __call__(self, x, pos, caches):
        """x (1, n, C) and pos (n,) after layer `first`. Puts this graph's caches, holding n rows, in
        caches[first:] (until the next replay overwrites them); returns (1, n, C)."""
        n = x.shape[1]
        self.x[:, :n] = x
        self.x[:, n:] = 0
        self.pos[:n] = pos
        self.pos[n:] = pos[-1] + self.pad[: self.rows - n]
        if self.graph is None:
            out = self.run()
        else:
            self.graph.replay()
            out = self.out  # the graph's output buffer, overwritten at the next replay: used right away
        for mine in self.caches:  # the real rows are the first n; what lies after them is padding
            mine.length = n
        caches[self.first :] = self.caches
        return out[:, :n]


# ----------------------------------------------------------------------------------------------------------------
# The decoders generate takes


# The decode step a CUDA graph replays, by name: the same function signature (model, token, pos, caches) -> logits
STEPS = {"plain": static_step, "tuned": tuned_step, "triton": triton_step}


def decoder_for(model, step: str = None, loop: bool = False):
    """What generate decodes with, by the step's name: the one place the commands choose it.

    None: generate's readable functions (on a CPU there is nothing to gain). "eager": the readable path on a
    GPU's kernels (EagerOnGPU). "plain", "tuned", "triton" (STEPS): static caches and CUDA graphs, the model
    prepared once (q+k+v and gate+up fused; "tuned" also compiles the blocks). `loop`: many questions will come
    (eval), so the prefill's tail gets graphs too and cache sizes round to a bucket; one question (answer) gets
    exact sizes and no prefill graphs, where a capture costs more than it saves. A model whose head_dim the Triton
    kernels do not take decodes with "plain", and a note says so."""
    if step is None:
        return None
    cuda = model.embed.weight.is_cuda
    if step == "eager":
        return EagerOnGPU(model) if cuda else None
    if step not in STEPS:
        raise ValueError(f"--decode {step!r} must be one of eager, {', '.join(STEPS)}")
    if step == "triton" and not triton_fits(model):
        print(f"note: head_dim {model.cfg.head_dim} is not a power of two, which the Triton step's RoPE kernel "
              "needs: decoding with the graph of the plain step (--decode plain)", file=sys.stderr)
        step = "plain"
    if step == "triton" and not cuda:
        raise ValueError("--decode triton runs CUDA kernels; the model is not on a CUDA device")
    if cuda:
        if step == "tuned" and loop:
            print("compiling the decoder blocks and an autotuned decode step for this run (once, at the first "
                  "questions; --decode plain skips it)", file=sys.stderr, flush=True)
        prepare(model, compile=step == "tuned")
    return FastDecoder(model, step=step) if loop else FastDecoder(model, bucket=1, prefill_bucket=0, step=step)


class FastDecoder:
    """The fast path, kept from one question to the next: CUDA graphs of the pruned prefill's last layers, and
    static caches with one graph of the decode step per size. generate(..., decoder=FastDecoder(model)).

    Each layer's cache size (the rows after prefill plus the new tokens) is rounded up to a multiple of
    `bucket`, so questions of about the same length share a graph. The price: a step reads its whole static
    cache, masked, so up to bucket - 1 empty rows per layer more than the exact size (a few percent of the
    weights' bytes at 7B). bucket=1 gives exact sizes and a capture for every new size. `step` names the decode
    step in the graph (STEPS): "plain", model.py's own; "tuned", through tuned_block (compiled, and autotuned on
    a GPU, once per process: eval's); "triton", through triton_step (three Triton kernels, nothing traced by
    torch: answer's, where a compile would cost more than the answer).
    The pruned prefill's rows after layer M are rounded up to a multiple of `prefill_bucket` (PrefillTail): the
    fewer padding rows the faster (16 beat 64 in every setting on an H100), but each new row count is a capture
    and 0.44 MB of cache per row at 7B. prefill_bucket=0 leaves those layers to the readable loop, as a one-shot
    question should (a capture costs more than it saves once): FastDecoder(model, bucket=1, prefill_bucket=0).
    """

    def __init__(self, model, bucket: int = 256, step: str = "plain", prefill_bucket: int = 16):
        if step not in STEPS:
            raise ValueError(f"FastDecoder: step={step!r} must be one of {', '.join(map(repr, STEPS))}")
        if step == "triton":  # fail here, in one line, not at the first decode step
            if not all(isinstance(b.attn, FusedQKVAttention) and isinstance(b.mlp, FusedMLP) for b in model.layers):
                raise ValueError("FastDecoder(step='triton') needs fused products: fast.prepare(model, compile=False)")
            if not triton_fits(model):
                raise ValueError(f"FastDecoder(step='triton'): its RoPE kernel takes a power-of-two head_dim, this "
                                 f"model's is {model.cfg.head_dim} (--decode plain decodes it without the kernels)")
            if not model.embed.weight.is_cuda:
                raise ValueError("FastDecoder(step='triton') decodes with CUDA kernels; the model is on "
                                 f"{model.embed.weight.device}")
            from minivtp.fast import triton_kernels  # noqa: F401  (its ImportError says what to install)
        if bucket < 1:
            raise ValueError(f"bucket={bucket} must be >= 1")
        if prefill_bucket < 0:
            raise ValueError(f"prefill_bucket={prefill_bucket} must be >= 0 (0: no prefill graphs)")
        self.model, self.bucket, self.step, self.graphs = model, bucket, step, {}
        self.prefill_bucket, self.tails = prefill_bucket, {}
        self.pool = torch.cuda.graph_pool_handle() if model.embed.weight.is_cuda else None  # shared by the tails

    def rest(self, x, cos, sin, pos, caches, start: int):
        """Layers start+1..L on the rows that survived pruning, through a PrefillTail (or the loop)."""
        if not self.prefill_bucket or start == len(self.model.layers):
            return self.model.forward_layers(x, cos, sin, pos, caches, start)
        rows = -(-x.shape[1] // self.prefill_bucket) * self.prefill_bucket
        if (start, rows) not in self.tails:
            self.tails[start, rows] = PrefillTail(self.model, start, rows, self.pool)
        return self.tails[start, rows](x, pos, caches)

    def steps(self, caches, new_tokens: int):
        """The decode steps of one question: a GraphDecode, found or made at the first step."""
        graph, i = None, 0

        def step(token, pos: int):
            nonlocal graph, i
            if graph is None:
                graph = self.begin(caches, token, pos, new_tokens)
            logits = graph(token, pos, i)
            i += 1
            return logits

        return step

    def begin(self, caches, token, pos: int, new_tokens: int):
        """Static caches holding `caches`' rows (room for `new_tokens` more) and the step to replay."""
        b = self.bucket
        sizes = tuple(-(-(c.length + new_tokens) // b) * b for c in caches)  # rounded up to the bucket
        if sizes not in self.graphs:
            static = [StaticKVCache.from_cache(c, n) for c, n in zip(caches, sizes)]
            self.graphs[sizes] = GraphDecode(self.model, static, token, pos, 0, self.step)
        else:
            for s, c in zip(self.graphs[sizes].caches, caches):
                s.load(c)
        return self.graphs[sizes]


class EagerOnGPU:
    """The readable path on a GPU: generate's own functions, the decode with GROWING_SDPA's kernels (no cuDNN plan
    for every new cache length)."""

    def __init__(self, model):
        self.model = model

    def rest(self, x, cos, sin, pos, caches, start: int):
        return self.model.forward_layers(x, cos, sin, pos, caches, start)

    def steps(self, caches, new_tokens: int):
        def step(token, pos: int):
            with sdpa_kernel(GROWING_SDPA):
                return decode_one_token(self.model, token, pos, caches)

        return step
