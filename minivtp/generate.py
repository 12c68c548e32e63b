"""Prefill with LLM-VTP, then decode from the smaller cache. Three small functions: prefill, decode_one_token,
generate.

    out = generate(model, embeds, 64, video=VideoSpan(35, 16, 144), alpha=0.1, layer=10)
    out.tokens, out.kept, out.cache_len

Prefill runs layers 1..M on the whole prompt. At layer M it scores the video tokens by the question's
attention (Eq. 4-6), then only the prefix, the kept video rows and the question rows go on to layers
M+1..L, and the caches of layers 1..M drop the other rows (Eq. 7-8). Positions travel with the rows: a kept
token keeps its RoPE position, and the first generated token sits at the *original* prompt length.
"""

import functools
import time
from dataclasses import dataclass, replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from minivtp import baselines, vtp
from minivtp.model import Block, KVCache, StaticKVCache

PAPER_LAYER = 10  # M used for PLLaVA and Tarsier multiple-choice runs (Sec. 4.3)
METHODS = ("llm-vtp", "random", "complement", "fastv", "look-m")
MERGES = ("average", "pivotal", "none")
HEAD_POOLS = ("max", "mean", "min")
RANKINGS = ("frame", "sequence")
SCORES = ("fast", "literal")


@dataclass(frozen=True)
class Method:
    """Which video tokens go on past layer M, and how they are chosen: one small value instead of a dozen keywords.

        Method(alpha=0.1, layer=10)                 # LLM-VTP as the paper runs PLLaVA on multiple choice
        Method("random", alpha=0.1, layer=2)        # a baseline: the same count per frame, chosen at random
        Method(alpha=0.1, layer=2, ranking="sequence", head_pool="mean")   # the ablations of Tab. 5 and 6
        Method("fastv", alpha=0.1, layer=2)         # FastV: the last row's attention at layer K=2 (baselines.py)
        Method("look-m", recent=0.05, important=0.05)   # Look-M: every layer's cache, after a full prefill
        Method(alpha=0.1, variant="released")       # LLM-VTP as the authors' code runs it (vtp.VARIANTS)
        Method(alpha=0.1, rope="before")            # the paper's rule with one of the released code's switches

    alpha=1 keeps every video token. `layer=None` means the paper's M=10 (Look-M uses no layer).
    PruMerge+ prunes in the vision tower, before the LLM: VideoLLM.prompt(..., prumerge=True).
    """

    name: str = "llm-vtp"  # see METHODS: "random" keeps the same per-frame count, "complement" what LLM-VTP drops
    alpha: float = 1.0  # fraction of the video's tokens kept, (0, 1]: per frame (LLM-VTP), over the video (FastV)
    layer: int = None  # M (FastV's K), counted from 1
    head_pool: str = "max"  # how A^(M)'s heads become one matrix (Tab. 6)
    ranking: str = "frame"  # top ceil(alpha*Nv) per frame (Eq. 5), or over the whole video (Tab. 5)
    scores: str = "fast"  # "literal" materialises all of A^(M) and slices it as Eq. 4 writes
    recent: float = 0.05  # Look-M: fraction of the prompt's rows kept as the most recent ones, [0, 1]
    important: float = 0.05  # Look-M: fraction kept by received attention, text rows first, [0, 1]
    merge: str = "average"  # Look-M: how evicted rows join kept ones: "average", "pivotal", "none"
    variant: str = "paper"  # LLM-VTP as the paper writes it or as its "released" code runs it (vtp.VARIANTS)
    rope: str = None  # scores from q, k with RoPE ("after") or without ("before"); None: the variant's
    causal: bool = None  # Eq. 3's causal mask on the scores (True) or none (False); None: the variant's
    question_pool: str = None  # a_v as the "mean" over question rows (Eq. 4) or their "max"; None: the variant's
    count: str = None  # per frame "ceil" keeps ceil(alpha*Nv) (Eq. 5), "floor" int(Nv*alpha), maybe 0; None: variant's

    @classmethod
    def from_keywords(cls, method=None, selection=None, **kw) -> "Method":
        """generate's keywords as one Method. `selection` is the older spelling of the name ("attention" is
        LLM-VTP); `method` may be a Method (then no other keyword) or a name."""
        if isinstance(method, Method):
            if kw or selection:
                raise ValueError(f"give either method=Method(...) or keywords ({', '.join(kw)}), not both")
            return method
        if selection is not None:
            if selection not in ("attention", "random", "complement"):
                raise ValueError(f"selection={selection!r} must be one of 'attention', 'random', 'complement'")
            name = "llm-vtp" if selection == "attention" else selection
            if method is not None and method != name:
                raise ValueError(f"method={method!r} and selection={selection!r} disagree")
            method = name
        return cls(method or "llm-vtp", **kw)

    def resolved(self, n_layers: int) -> "Method":
        """This method with M filled in and every field checked against a model of `n_layers` layers."""
        if self.name == "prumerge+":
            raise ValueError("method='prumerge+' prunes in the vision tower, before the LLM: build the prompt with "
                             "VideoLLM.prompt(ids, pixels, prumerge=True) and generate with video=None")
        for name in ("recent", "important"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is outside [0, 1]: a fraction of the prompt's rows")
        if self.recent + self.important == 0:
            raise ValueError("recent=0 and important=0 would keep no row at all")
        layer = self.layer
        if self.name == "look-m" and layer is None:
            layer = 1  # Look-M has no pruning layer; any valid one keeps the checks below simple
        if layer is None:
            if n_layers < PAPER_LAYER:
                raise ValueError(f"layer must be given: the default M={PAPER_LAYER} is outside 1..{n_layers}")
            layer = PAPER_LAYER
        if not (isinstance(layer, int) and 1 <= layer <= n_layers):
            raise ValueError(f"layer={layer!r} is outside 1..{n_layers} (M counts decoder layers from 1, as in the paper)")
        vtp.check_alpha(self.alpha)
        for name, value, allowed in (("method", self.name, METHODS), ("head_pool", self.head_pool, HEAD_POOLS),
                                     ("ranking", self.ranking, RANKINGS), ("scores", self.scores, SCORES),
                                     ("merge", self.merge, MERGES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, allowed))}")
        if self.variant not in vtp.VARIANTS:
            raise ValueError(f"variant={self.variant!r} must be one of {', '.join(map(repr, vtp.VARIANTS))}")
        switches = {k: getattr(self, k) if getattr(self, k) is not None else v
                    for k, v in vtp.VARIANTS[self.variant].items()}  # a field given overrides its variant
        for name, value in switches.items():
            if value not in vtp.SWITCHES[name]:
                raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, vtp.SWITCHES[name]))}")
        if self.name in ("fastv", "look-m") and switches != vtp.VARIANTS["paper"]:
            raise ValueError(f"variant and its switches (rope, causal, question_pool, count) are LLM-VTP's; "
                             f"method={self.name!r} has its own rule")
        return replace(self, layer=layer, **switches)


@dataclass
class Pruning:
    """What the method decided (at layer M for LLM-VTP and FastV; in every layer's cache for Look-M)."""

    layer: int  # M (Look-M: None)
    kept: torch.Tensor  # (S,) sorted prompt positions of the kept video tokens (Look-M: those of layer 1's cache)
    rows: torch.Tensor  # prompt rows that went on to layers M+1..L (Look-M: kept in layer 1's cache)
    scores: torch.Tensor  # (T*Nv,) the score of every video token (float32), at layer M (Look-M: layer 1)


@dataclass
class Generation:
    tokens: torch.Tensor  # (n,) long
    logits: torch.Tensor  # (n, V) the logits each token was chosen from; row 0 comes from the prefill
    kept: torch.Tensor  # (S,) sorted prompt positions of the kept video tokens (all of them when not pruned)
    cache_len: int  # rows in the KV cache of layer 1 after prefill (LLM-VTP, Look-M: of every layer)
    prompt_len: int  # N, before pruning
    cache_lens: list = None  # rows in each layer's KV cache after prefill (FastV: N in layers 1..K)
    pruning: Pruning = None  # None when nothing was pruned (video=None)
    prefill_s: float = 0.0  # wall-clock seconds (the GPU synchronised first)
    decode_s: float = 0.0


def choose(method: Method, a_v, video, generator=None):
    """S, the kept video tokens as sorted prompt positions, from the scores a_v (T*Nv,)."""
    # subtle: count= goes only to the released floor, so exercise 5's select_per_frame(a_v, video, alpha) plugs in
    count = {} if method.count == "ceil" else dict(count=method.count)
    if method.name == "random":
        return vtp.select_random(video, method.alpha, generator, **count).to(a_v.device)
    if method.ranking == "frame":
        S = vtp.select_per_frame(a_v, video, method.alpha, **count)  # Eq. 5-6
    else:
        S = vtp.select_whole_sequence(a_v, video, method.alpha, **count)  # Tab. 5's alternative
    return vtp.complement(S, video) if method.name == "complement" else S


@torch.no_grad()
def prefill(model, embeds, caches, video=None, method=None, generator=None, fused=True, tail=None, **keywords):
    """Run the prompt (1, N, C) through every layer, pruning at layer M. Returns (last row's logits (V,), Pruning).

    `method` is a Method (or its name, with the keywords of Method: alpha=, layer=, ...). `tail` (a FastDecoder,
    or None) runs layers M+1..L of a pruned prompt as one replayed CUDA graph instead of the loop below; then
    caches[M:] are the graph's own, read them before the tail's next replay (generate copies them at once)."""
    method = Method.from_keywords(method, **keywords).resolved(model.cfg.n_layers)
    if video is not None and not isinstance(video, vtp.VideoSpan):
        raise ValueError(f"video must be a VideoSpan, got {type(video).__name__} (a video PruMerge+ already pruned "
                         "goes to generate with video=None)")
    N = embeds.shape[1]
    x = embeds
    pos = torch.arange(N, device=embeds.device)  # (N,) positions; after layer M only the kept ones remain
    cos, sin = model.rope(pos)
    pruning = None
    for l, (block, cache) in enumerate(zip(model.layers, caches), start=1):
        x_in = x
        x = block(x, cos, sin, pos, cache, slot=0, fused=fused)  # (1, N or len(rows), C)
        if video is None:
            continue
        if method.name == "look-m":  # every layer: compress this layer's cache, the hidden states go on whole
            scores = baselines.received_attention(block, x_in, cos, sin, pos, cache)  # (N,)
            rows, evicted = baselines.look_m_rows(scores, video, method.recent, method.important)
            baselines.merge_evicted(cache, rows, evicted, method.merge)
            if l == 1:
                S = rows[(rows >= video.start) & (rows < video.end)]
                pruning = Pruning(layer=None, kept=S, rows=rows, scores=scores[video.start : video.end])
            continue
        if l != method.layer:
            continue
        if method.name == "fastv":  # --- FastV at layer K: the last row decides; layers 1..K keep their caches
            a_v = baselines.last_row_scores(block, x_in, cos, sin, pos, cache, video)  # (T*Nv,)
            S = baselines.fastv_select(a_v, video, method.alpha)
            rows = vtp.rows_to_keep(N, video, S)
            x, pos, cos, sin = vtp.drop_rows(x, pos, cos, sin, [], rows)
        else:  # --- LLM-VTP at layer M (and its random and complement baselines) --------------------------
            score = vtp.scores_fast if method.scores == "fast" else vtp.scores_literal
            a_v = score(block, x_in, cos, sin, pos, cache, video, method.head_pool, method.rope, method.causal,
                        method.question_pool)  # Eq. 4, mean over questions (the paper's variant)
            S = choose(method, a_v, video, generator)
            rows = vtp.rows_to_keep(N, video, S)  # prefix + S + question rows
            x, pos, cos, sin = vtp.drop_rows(x, pos, cos, sin, caches[:l], rows)  # layers M+1..L; Eq. 7-8 on 1..M
        pruning = Pruning(layer=l, kept=S, rows=rows, scores=a_v)
        if tail is not None and l < len(model.layers):  # the same layers M+1..L, replayed as one CUDA graph
            x = tail.prefill_tail(l, x, pos, caches)
            break
    return model.head(x[:, -1:])[0, -1], pruning  # (V,)


# subtle: here the caches grow by a row at every step, and given a mask PyTorch may choose cuDNN's attention on a
# GPU, which builds a plan for every new number of keys: tens of ms each time the process first meets that number,
# so a one-shot question paid it at every step (bench/fast_path.py). The other kernels take any length as it comes.
GROWING_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@torch.no_grad()
def decode_one_token(model, token, pos: int, caches, fused=True):
    """One new token at position `pos`, written after the last filled row of every cache. Returns logits (V,)."""
    p = torch.tensor([pos], device=token.device)  # (1,)
    # subtle: after pruning a cache holds fewer rows than `pos` says came before (and under FastV the layers do
    # not even agree on how many), so each cache appends after its own last row (slot None); the position is
    # the same for all: the original prompt length plus the tokens decoded so far
    with sdpa_kernel(GROWING_SDPA):
        return decode_static(model, token, p, None, caches, fused)


@torch.no_grad()
def decode_static(model, token, pos, at, caches, fused=True):
    """One decode step through every layer. pos (1,) tensor. With KVCaches, `at` is None and each cache returns
    its filled rows (the eager path). With StaticKVCaches, `at` is the step as a (1,) tensor and each cache is
    read whole, its empty slots masked, so the same kernels run at every step and the step can be captured in a
    CUDA graph."""
    x = model.embed(token.view(1, 1))  # (1, 1, C)
    cos, sin = model.rope(pos)
    for block, cache in zip(model.layers, caches):
        x = block(x, cos, sin, pos, cache, slot=at, fused=fused)
    return model.head(x)[0, -1]


# torch.compile's mode for the decode step on a GPU: time Triton's kernels against cuBLAS for every weight shape
# and keep the faster (our own CUDA graph captures the result, so not torch's graphs as well)
AUTOTUNE = "max-autotune-no-cudagraphs"


def decode_block(block, x, cos, sin, pos, cache, at):
    """One decoder block in the decode step, Block.forward itself. A function of its own so that torch.compile
    counts its compiles apart from the blocks' (Transformer.compile_blocks): torch keeps at most
    torch._dynamo.config.recompile_limit (8) compiled versions of one function and then runs it eagerly, and the
    prefill's sizes, the decode's and a second model's dtype would otherwise share those eight."""
    return Block.forward(block, x, cos, sin, pos, cache, slot=at)


@functools.cache
def tuned_block(mode=None):
    """decode_block through torch.compile for the decode step, made once per process and mode.

    A decode step reads every weight once for one row, so it is as fast as its matrix-vector products. Tuned
    with AUTOTUNE, Inductor writes those products as reductions of its own and folds the norm before each one
    into it. With the blocks themselves compiled that way the prefill's products got slower, hence a compile
    for the decode alone: on an H100 the step went from 1.31-1.34x to 1.17-1.25x the bandwidth floor
    (four runs, bench/RESULTS.md). Like the blocks' own, it serves all L layers (one block's code) and every
    cache size after the second."""
    return torch.compile(decode_block, mode=mode)


@torch.no_grad()
def decode_tuned(model, token, pos, at, caches):
    """decode_static's step, each block through tuned_block() (AUTOTUNE on a GPU). StaticKVCaches only."""
    run = tuned_block(AUTOTUNE if token.is_cuda else None)
    x = model.embed(token.view(1, 1))  # (1, 1, C)
    cos, sin = model.rope(pos)
    for block, cache in zip(model.layers, caches):
        x = run(block, x, cos, sin, pos, cache, at)
    return model.head(x)[0, -1]


def prepare_fast(model, compile: bool = True):
    """What the fast path changes in a model on a GPU, once per process: q, k, v as one matmul
    (Transformer.fuse_qkv: the same numbers, no weight stored twice), and with `compile` every decoder block
    compiled (Transformer.compile_blocks: one compile, seconds, serves all layers and every later size).
    `python -m minivtp eval` does both on CUDA, `answer` only the first. Returns the model."""
    model.fuse_qkv()
    return model.compile_blocks() if compile else model


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
    """decode_static captured once in a CUDA graph, then replayed: one launch per token instead of hundreds.

    Built at the first decode step with that step's real inputs, so the warm-up's cache writes are the ones
    the replay makes anyway. On a CPU there are no graphs and it simply calls decode_static.
    """

    def __init__(self, model, caches, token, pos: int, step: int = 0, compile=False):  # caches: StaticKVCaches
        dev = caches[0].k.device
        self.step = decode_tuned if compile else decode_static
        self.model, self.caches = model, caches
        self.token = token.view(1).clone()
        self.pos = torch.tensor([pos], device=dev)
        self.at = torch.tensor([step], device=dev)
        self.graph = None
        if dev.type == "cuda":
            self.graph, self.logits = capture(lambda: self.step(model, self.token, self.pos, self.at, caches))

    def __call__(self, token, pos: int, step: int):
        self.token.copy_(token.view(1))
        self.pos.fill_(pos)
        self.at.fill_(step)
        if self.graph is None:
            return self.step(self.model, self.token, self.pos, self.at, self.caches)
        self.graph.replay()
        return self.logits.clone()  # the graph overwrites its output buffer at the next replay


class PrefillTail:
    """Layers first+1..L of a pruned prefill for `rows` rows, captured once in a CUDA graph and replayed.

    Why: after layer M a pruned prompt has a few hundred rows, so each of the remaining layers' thirty-odd
    kernels finishes in microseconds and the GPU waits on Python to launch the next (launch-bound). The row
    count is fixed from layer M on, so the rest of the prefill has static shapes and can be one graph.

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

    def run(self):  # (1, rows, C): the loop of prefill, from layer first+1 on, into this object's caches
        cos, sin = self.model.rope(self.pos)
        x = self.x
        for block, cache in zip(self.model.layers[self.first :], self.caches):
            x = block(x, cos, sin, self.pos, cache, slot=0)
        return x

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


class FastDecoder:
    """The fast path, kept from one question to the next: CUDA graphs of the pruned prefill's last layers, and
    static caches with one graph of the decode step per size.

        decoder = FastDecoder(model)
        for embeds, video in questions:          # an evaluation loop: one capture per size, not per question
            generate(model, embeds, 5, video=video, alpha=0.1, layer=10, fast_decode=decoder)

    Each layer's cache size (the rows after prefill plus the new tokens) is rounded up to a multiple of
    `bucket`, so questions of about the same length share a graph. The price: a step reads its whole static
    cache, masked, so up to bucket - 1 empty rows per layer more than the exact size (a few percent of the
    weights' bytes at 7B). bucket=1 gives exact sizes and a capture for every new size. compile=True decodes
    through tuned_block (compiled, and autotuned on a GPU, once per process).
    The pruned prefill's rows after layer M are rounded up to a multiple of `prefill_bucket` (PrefillTail): the
    fewer padding rows the faster (16 beat 64 in every setting on an H100, bench/RESULTS.md), but each new row
    count is a capture and 0.44 MB of cache per row at 7B. prefill_bucket=0 leaves those layers to prefill's
    loop, as a one-shot question should (a capture costs more than it saves once).
    """

    def __init__(self, model, bucket: int = 256, compile: bool = False, prefill_bucket: int = 16):
        if bucket < 1:
            raise ValueError(f"bucket={bucket} must be >= 1")
        if prefill_bucket < 0:
            raise ValueError(f"prefill_bucket={prefill_bucket} must be >= 0 (0: no prefill graphs)")
        self.model, self.bucket, self.compile, self.graphs = model, bucket, compile, {}
        self.prefill_bucket, self.tails = prefill_bucket, {}
        self.pool = torch.cuda.graph_pool_handle() if model.embed.weight.is_cuda else None  # shared by the tails

    def prefill_tail(self, first: int, x, pos, caches):
        """Layers first+1..L on the rows that survived pruning (see prefill), through a PrefillTail."""
        rows = -(-x.shape[1] // self.prefill_bucket) * self.prefill_bucket
        if (first, rows) not in self.tails:
            self.tails[first, rows] = PrefillTail(self.model, first, rows, self.pool)
        return self.tails[first, rows](x, pos, caches)

    def begin(self, caches, token, pos: int, new_tokens: int):
        """Static caches holding `caches`' rows (room for `new_tokens` more) and the step to replay."""
        b = self.bucket
        sizes = tuple(-(-(c.length + new_tokens) // b) * b for c in caches)  # rounded up to the bucket
        if sizes not in self.graphs:
            static = [StaticKVCache.from_cache(c, n) for c, n in zip(caches, sizes)]
            self.graphs[sizes] = GraphDecode(self.model, static, token, pos, 0, compile=self.compile)
        else:
            for s, c in zip(self.graphs[sizes].caches, caches):
                s.load(c)
        return self.graphs[sizes]


def pick(logits, temperature: float, generator=None):
    if temperature == 0:
        return logits.argmax()
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()  # the seeded generator lives on the CPU
    return torch.multinomial(probs, 1, generator=generator)[0].to(logits.device)


@torch.no_grad()
def generate(model, embeds, max_new_tokens: int, video=None, method=None, *, temperature=0.0, eos_id=None, seed=0,
             fused=True, fast_decode=False, **keywords) -> Generation:
    """Answer a prompt of embeddings (1, N, C), pruning at layer M when `video` (a VideoSpan) is given.

        generate(model, embeds, 64, video=VideoSpan(35, 16, 144), alpha=0.1, layer=10)
        generate(model, embeds, 64, video=span, method=Method("random", alpha=0.1, layer=10))

    The pruning is a Method, or its keywords (alpha=, layer=, head_pool=, ranking=, scores=, and the older
    selection="attention" | "random" | "complement"); alpha=1 keeps every video token, video=None skips scoring.
    Greedy unless temperature > 0. `fast_decode=True` decodes from a static cache, replaying one CUDA graph per
    token on a GPU; `fast_decode=FastDecoder(model)` does the same and keeps the graph for the next call.
    """
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise ValueError(f"embeds must be (1, N, C), got {tuple(embeds.shape)}")
    N = embeds.shape[1]
    method = Method.from_keywords(method, **keywords)
    if video is None and method.layer is None:
        method = replace(method, layer=1)  # nothing is pruned; any valid M will do
    method = method.resolved(model.cfg.n_layers)
    if isinstance(video, vtp.VideoSpan):
        video.check(N)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if N + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt {N} + max_new_tokens {max_new_tokens} = {N + max_new_tokens} exceeds the "
                         f"model's {model.cfg.max_seq_len} positions")
    generator = torch.Generator().manual_seed(seed)
    caches = model.new_caches(batch=1, max_len=N + max_new_tokens)
    t0 = clock(embeds.device)
    decoder = fast_decode if isinstance(fast_decode, FastDecoder) else None
    if fast_decode is True:  # one question: a graph for the decode steps, none for the prefill
        decoder = FastDecoder(model, bucket=1, prefill_bucket=0)
    tail = decoder if decoder is not None and decoder.prefill_bucket and fused else None
    logits, pruning = prefill(model, embeds.to(model.embed.weight.dtype), caches, video, method, generator, fused, tail)
    cache_len, cache_lens = caches[0].length, [c.length for c in caches]
    t1 = clock(embeds.device)
    step = None
    tokens, all_logits = [], []
    for i in range(max_new_tokens):
        token = pick(logits, temperature, generator)
        tokens.append(token)
        all_logits.append(logits)
        if (eos_id is not None and token.item() == eos_id) or i == max_new_tokens - 1:
            break
        # subtle: the new token's position goes on from N, the unpruned prompt length, not from the cache's rows
        if decoder is not None:  # static caches of the slots still to be used, and (on CUDA) a graph
            if step is None:
                step = decoder.begin(caches, token, N + i, max_new_tokens)
            logits = step(token, N + i, i)
        else:
            logits = decode_one_token(model, token, N + i, caches, fused)
    t2 = clock(embeds.device)
    kept = pruning.kept if pruning else torch.arange(video.start, video.end) if video else torch.empty(0, dtype=torch.long)
    return Generation(tokens=torch.stack(tokens), logits=torch.stack(all_logits), kept=kept, cache_len=cache_len,
                      prompt_len=N, cache_lens=cache_lens, pruning=pruning, prefill_s=t1 - t0, decode_s=t2 - t1)


def clock(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
