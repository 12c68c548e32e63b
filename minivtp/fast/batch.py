"""Many questions at once: each pruned by its own question, then one decode step for all of them.

    outs = generate_many(model, [Question(embeds, video, 5), Question(embeds2, video2, 5)], Method(alpha=0.1, layer=10))
    outs[0].tokens    # what generate.generate(model, embeds, 5, video=video, alpha=0.1, layer=10) answers

Every Generation is the one generate.generate gives for that question alone (tests/test_batch.py checks it in
float32 on the CPU): the same kept set, positions and stopping. model.py, vtp.py and generate.py stay written for
one question; this file reuses their blocks and functions and adds what a batch needs.

Why the prefill runs one question at a time. At layer M each question keeps its own video tokens, so from M on the
prompts have different row counts, and before M they differ too (question lengths, frame counts). A batched prefill
would pad every prompt to the longest and mask; the prefill is compute-bound (thousands of rows a question), so the
padding would be paid in FLOPs, and the scoring at layer M (vtp.scores_fast) reads one question's attention. Alone,
each prompt runs at its own length through generate.prefill (on a GPU with the FastDecoder's graphs of layers
M+1..L), and nothing of the paper's path changes. The decode is the other way round: a step is one row a question,
bandwidth-bound, and its cost is reading the weights (13 GB at 7B). B questions in one step read them once: each
projection is one matmul over B rows, the attention reads each question's own cache.

The cache: padded, not paged. BatchKVCache holds every layer's keys as (B, Hkv, size, D), each question's kept rows
packed to the front of its own row, its slots after them at position EMPTY (the causal mask by positions,
model.causal_mask's rule, hides them), its length in `start`. A decode step writes question b's new row at slot
start[b] + step. The trade-off: a step reads every slot of every question, so each pays for the longest question's
rows plus the rounding of the size to a bucket (BatchDecoder's, 32 slots: one graph serves batches of about the same
length); paged storage (a block table, attention that gathers the blocks) reads only the rows each question has, but
needs an attention kernel that reads through a table, which PyTorch does not ship. Under LLM-VTP the rows left differ
by the question's length only (the video part is T * ceil(alpha*Nv) for every question of a benchmark's T frames),
tens of rows in a few hundred, and the KV bytes are small beside the weights once pruned; bench/floors.py --parts
batch prints the step's floor with the slots it reads and with only the rows held, and the padding's share. Paging
would pay where lengths differ by a lot (different frame counts in one batch, unpruned long videos).

On CUDA the step is captured as a CUDA graph for each batch size and cache size (BatchDecoder), as fast.GraphDecode
does for one question; on a CPU the same function simply runs, so the tests run the graphs' code without graphs.
"""

import time
from dataclasses import dataclass, replace

import torch

from minivtp import vtp
from minivtp.fast import AUTOTUNE, capture
from minivtp.generate import Generation, Method, check_prompt, clock, pick, prefill
from minivtp.model import (
    EMPTY,
    KVCache,
    apply_rope,
    attention_fused,
    attention_manual,
    repeat_kv,
)


@dataclass
class Question:
    """One question as generate takes it: embeddings (1, N, C), where its video sits (None: nothing to prune)."""

    embeds: torch.Tensor
    video: vtp.VideoSpan = None
    max_new_tokens: int = 5
    eos_id: int = None
    positions: torch.Tensor = None  # RoPE's positions when they are not the rows' (M-RoPE's (3, N)): asked alone
    added: dict = None  # DeepStack's rows (Qwen3-VL): asked alone too


def resolve(model, method, video):
    """The method generate runs for one question: without a video and a layer, any valid M (1) will do."""
    if video is None and isinstance(method, Method) and method.layer is None:
        method = replace(method, layer=1)
    return method.resolved(model.cfg.n_layers)


# ----------------------------------------------------------------------------------------------------------------
# A cache for B questions whose rows differ, and the decode step over it


class BatchKVCache:
    """One layer's keys and values for B questions: (B, Hkv, size, D), question b's rows in slots 0..start[b]-1.

    Made once per batch from each question's own pruned KVCache (`load`); a decode step then appends one row per
    question at slot start + step, the slots never written at position EMPTY. `step` is a tensor, shared by every
    layer and set before each step, so that a CUDA graph replays the same kernels with new values."""

    def __init__(self, batch, n_kv_heads, size, head_dim, dtype=torch.float32, device=None):
        self.k = torch.zeros(batch, n_kv_heads, size, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, size), EMPTY, device=device)  # (B, size)
        self.start = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) rows each question holds
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.rows = torch.arange(batch, device=device)  # (B,) for the per-question slot writes

    def load(self, caches):
        """Question b's rows from caches[b] (a KVCache of batch 1), in place: a captured graph reads these buffers."""
        for b, c in enumerate(caches):
            n = c.length
            if n > self.k.shape[2]:
                raise ValueError(f"cannot fit a cache holding {n} rows into {self.k.shape[2]} slots")
            self.k[b, :, :n], self.v[b, :, :n], self.pos[b, :n] = c.k[0, :, :n], c.v[0, :, :n], c.pos[:n]
            self.pos[b, n:] = EMPTY
            self.start[b] = n
        return self

    def append(self, k, v, pos):
        """k, v (B, Hkv, 1, D) at positions pos (B,): each question's row after its own last one."""
        slot = self.start + self.step  # (B,)
        # subtle: indices on dims 0 and 2 around a slice put the indexed dim first: (B, Hkv, D), as k[:, :, 0] is
        self.k[self.rows, :, slot] = k[:, :, 0]
        self.v[self.rows, :, slot] = v[:, :, 0]
        self.pos[self.rows, slot] = pos
        return self.k, self.v, self.pos  # (B, Hkv, size, D) x2, (B, size)


def batch_block(block, x, cos, sin, pos, cache):
    """Block.forward for one new row of each of B questions, x (B, 1, C), each at its own position pos (B,).

    The same computation as model.py's Attention and Block, written again only where one question's shapes do not
    carry over: RoPE's cos/sin (B, 1, 1, D) differ per question, and so does the mask (each question's positions)."""
    a = block.attn
    B = x.shape[0]
    h = block.attn_norm(x)
    q, k, v = a.project(h)  # (B, 1, H*D), (B, 1, Hkv*D) x2: one matmul each over the B rows
    q = apply_rope(a.heads(q, a.n_heads), cos, sin)  # (B, H, 1, D)
    k = apply_rope(a.heads(k, a.n_kv_heads), cos, sin)  # (B, Hkv, 1, D)
    v = a.heads(v, a.n_kv_heads)  # (B, Hkv, 1, D)
    k, v, k_pos = cache.append(k, v, pos)  # (B, Hkv, size, D) x2, (B, size)
    n_rep = a.n_heads // a.n_kv_heads
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, size, D)
    mask = (k_pos <= pos[:, None])[:, None, None]  # (B, 1, 1, size): model.causal_mask per question, EMPTY hidden
    out = attention_fused(q, k, v, mask) if a.fused else attention_manual(q, k, v, mask)  # (B, H, 1, D)
    x = x + a.wo(out.transpose(1, 2).reshape(B, 1, a.n_heads * a.head_dim))  # (B, 1, C)
    return x + block.mlp(block.mlp_norm(x))


@torch.no_grad()
def batch_step(model, tokens, pos, caches, block=batch_block):
    """One decode step for B questions: tokens (B,) at positions pos (B,) -> logits (B, V) float32."""
    x = model.embed(tokens[:, None])  # (B, 1, C)
    cos, sin = model.rope(pos)  # (B, D)
    cos, sin = cos[:, None, None], sin[:, None, None]  # (B, 1, 1, D): one rotation per question, all heads
    for layer, cache in zip(model.layers, caches):
        x = block(layer, x, cos, sin, pos, cache)
    return model.head(x)[:, -1]  # (B, V)


class BatchDecoder:
    """The batched decode step, kept from one batch to the next: BatchKVCaches and, on CUDA, a graph of the step
    for each batch size (the last cache size it met; a new size captures again). On a CPU the step just runs.

    Cache sizes are rounded up to a multiple of `bucket` (as fast.FastDecoder's), so batches of about the same
    rows share a graph. compile=True runs each block through torch.compile (AUTOTUNE on a GPU) inside the graph."""

    def __init__(self, model, bucket: int = 32, compile: bool = False, graphs: bool = True):
        if bucket < 1:
            raise ValueError(f"bucket={bucket} must be >= 1")
        self.model, self.bucket, self.compile, self.graphs = model, bucket, compile, {}
        self.capture = graphs  # False: the step runs as it is on CUDA too (eval --eager)
        self.block = batch_block
        if compile:
            mode = AUTOTUNE if model.embed.weight.is_cuda else None
            self.block = torch.compile(batch_block, mode=mode)

    def begin(self, caches, new_tokens: int):
        """A step for these questions: caches[b] is question b's list of per-layer KVCaches after its prefill.
        Returns step(tokens (B,), pos (B,), i) -> logits (B, V)."""
        B, b = len(caches), self.bucket
        sizes = tuple(-(-(max(c[layer].length for c in caches) + new_tokens) // b) * b
                      for layer in range(len(self.model.layers)))
        known = self.graphs.get(B)
        if known is None or known.sizes != sizes:
            self.graphs.pop(B, None)  # its buffers go before the new ones are made
            known = self.graphs[B] = BatchGraph(self.model, caches, sizes, self.block, self.capture)
        else:
            for layer, cache in enumerate(known.caches):
                cache.load([c[layer] for c in caches])
        return known


class BatchGraph:
    """batch_step on BatchKVCaches of fixed sizes, captured in a CUDA graph at the first step (CUDA only)."""

    def __init__(self, model, caches, sizes, block, capture=True):
        w = model.embed.weight
        cfg, B = model.cfg, len(caches)
        self.model, self.sizes, self.block = model, sizes, block
        self.caches = [BatchKVCache(B, cfg.n_kv_heads, n, cfg.head_dim, w.dtype, w.device) for n in sizes]
        self.step = torch.zeros(1, dtype=torch.long, device=w.device)
        for layer, cache in enumerate(self.caches):
            cache.step = self.step  # one tensor for every layer, set before each step
            cache.load([c[layer] for c in caches])
        if block is not batch_block:  # compiled: the cache size a symbol from the first compile, as GraphDecode's
            import torch._dynamo as dynamo
            for cache in self.caches:
                for t, dim in ((cache.k, 2), (cache.v, 2), (cache.pos, 1)):
                    dynamo.maybe_mark_dynamic(t, dim)
        self.tokens = torch.zeros(B, dtype=torch.long, device=w.device)
        self.pos = torch.zeros(B, dtype=torch.long, device=w.device)
        self.graph, self.capture = None, capture and w.is_cuda

    def run(self):
        return batch_step(self.model, self.tokens, self.pos, self.caches, self.block)

    def __call__(self, tokens, pos, i: int):
        self.tokens.copy_(tokens)
        self.pos.copy_(pos)
        self.step.fill_(i)
        if not self.capture:
            return self.run()
        if self.graph is None:
            # subtle: the warm-up runs inside capture write step i's rows, which the replay below writes again
            self.graph, self.logits = capture(self.run)
        self.graph.replay()
        return self.logits.clone()  # the graph overwrites its output buffer at the next replay


# ----------------------------------------------------------------------------------------------------------------
# Generation


def refusal(model, method: Method, p: Question):
    """The ValueError generate.generate would raise for this prompt before prefilling it, or None."""
    try:
        resolve(model, method, p.video)
        check_prompt(model, p.embeds, p.max_new_tokens, p.video)
    except ValueError as e:
        return e
    return None


@torch.no_grad()
def generate_many(model, prompts, method=None, *, temperature=0.0, seed=0, decoder=None, batch_decoder=None,
                  **keywords):
    """generate.generate for each Question, the decode steps shared. Returns one Generation per prompt, in order.

    Each question is prefilled alone (generate.prefill: its own length, kept set and positions; `decoder` as
    generate's), then every question's pruned caches join one BatchKVCache per layer and one step decodes a row of
    each until each has met its eos_id or its max_new_tokens. A question that is done still rides along (its row
    is computed, not used) until the longest is done: the step's cost is the weights, not the rows.
    `batch_decoder`: a BatchDecoder for this model (made here when None). Memory: each question's pruned rows are
    copied out of its prefill's caches (a FastDecoder reuses those) and then into the batch's, so for a moment
    they are held twice; bench/floors.py's largest batch counts them twice."""
    if not prompts:
        return []
    method = Method.from_keywords(method, **keywords)
    methods = [resolve(model, method, p.video) for p in prompts]
    for p in prompts:
        check_prompt(model, p.embeds, p.max_new_tokens, p.video)
    if batch_decoder is None:
        batch_decoder = BatchDecoder(model, bucket=1)
    elif batch_decoder.model is not model:
        raise ValueError("the batch decoder was made for another model: make one per model")
    dev = prompts[0].embeds.device
    # --- each question alone: its prefill, its pruning, its first token -----------------------------------------
    kept_caches, firsts, outs, generators = [], [], [], []
    for p, method in zip(prompts, methods):
        N = p.embeds.shape[1]
        generator = torch.Generator().manual_seed(seed)  # generate's: one per question, seeded the same
        caches = model.new_caches(batch=1, max_len=N + p.max_new_tokens)
        t0 = clock(dev)
        x = p.embeds.to(model.embed.weight.dtype)
        if p.video is None or isinstance(method, Method):
            logits, pruning = prefill(model, x, caches, p.video, method, generator, decoder)
        else:  # a rival of minivtp/rivals/ brings its own prefill, as in generate
            logits, pruning = method.prefill(model, x, caches, p.video, generator, decoder)
        # subtle: a FastDecoder's prefill hands over caches that its next replay overwrites: copy the rows now
        kept_caches.append([_copy(c) for c in caches])
        t1 = clock(dev)
        kept = pruning.kept if pruning else torch.empty(0, dtype=torch.long)
        outs.append(Generation(tokens=None, logits=None, kept=kept, cache_len=caches[0].length, prompt_len=N,
                               cache_lens=[c.length for c in caches], pruning=pruning, prefill_s=t1 - t0))
        firsts.append(logits)
        generators.append(generator)
    # --- all of them together: one decode step a token --------------------------------------------------------
    t1 = clock(dev)
    B, longest = len(prompts), max(p.max_new_tokens for p in prompts)
    tokens, logits_seen = [[] for _ in prompts], [[] for _ in prompts]
    done = [False] * B
    logits = torch.stack(firsts)  # (B, V)
    step = None
    for i in range(longest):
        if temperature == 0:  # pick's argmax, for all B rows at once: one wait for the GPU a step, not B
            new = logits.argmax(dim=-1)  # (B,)
        else:  # each question draws from its own generator, as alone
            new = torch.stack([pick(logits[b], temperature, generators[b]) for b in range(B)])
        chosen = new.tolist()
        for b, p in enumerate(prompts):
            if done[b]:
                continue
            tokens[b].append(new[b])
            logits_seen[b].append(logits[b])
            if chosen[b] == p.eos_id or i == p.max_new_tokens - 1:
                done[b] = True
        if all(done):
            break
        if step is None:  # made after the first token, as generate makes its steps
            step = batch_decoder.begin(kept_caches, longest)
            kept_caches = None  # the rows are in the batch's caches now
        # subtle: each question's position goes on from its own N, the unpruned prompt length
        pos = torch.tensor([o.prompt_len + i for o in outs], device=dev)
        logits = step(new, pos, i)
    decode_s = (clock(dev) - t1) / B  # each question's share of the shared steps
    for b, o in enumerate(outs):
        o.tokens, o.logits, o.decode_s = torch.stack(tokens[b]), torch.stack(logits_seen[b]), decode_s
    return outs


def _copy(cache):
    """A KVCache holding only a filled cache's rows (its own buffers)."""
    B, Hkv, _, D = cache.k.shape
    mine = KVCache(B, Hkv, cache.length, D, cache.k.dtype, cache.k.device)
    mine.append(cache.k[:, :, : cache.length], cache.v[:, :, : cache.length], cache.pos[: cache.length])
    return mine


# ----------------------------------------------------------------------------------------------------------------
# eval --batch-size B


def answer_rows(answer, questions, row_of, batch_size: int):
    """eval's rows for `questions`, in their order, asked `batch_size` at a time: one row per question, as with one.

    `row_of(q)` is evaluate's row generator for a question: it yields a Question where the model must answer and goes
    on with the Generation sent back (a question of two prompts, as VideoChatGPT's consistency pairs, yields twice).
    All the questions of a batch are run up to their prompt, those prompts answered by one generate_many, and so
    on until every row is done; a prompt generate would refuse is thrown back into its row as generate's
    ValueError. Each row's `seconds` is its share of the batch's wall-clock, decode_s its share of the steps. The
    rows of a batch come when the whole batch is done, so a killed run asks at most that batch again."""
    if answer.batch_decoder is None:
        # subtle: not compiled, even where eval compiles the one-question step: the batched step's compile has not
        # yet run on a GPU (bench.floors --parts batch --batch-compiled times it); graphs unless --eager
        answer.batch_decoder = BatchDecoder(answer.llm, graphs=not answer.args.eager)
    for first in range(0, len(questions), batch_size):
        chunk = questions[first : first + batch_size]
        t0 = time.perf_counter()
        rows, waiting = [None] * len(chunk), {}  # waiting: question -> the Question its row yielded
        gens = [row_of(q) for q in chunk]
        for i, g in enumerate(gens):
            resume(gens, i, None, rows, waiting)
        while waiting:
            asked, ready = dict(waiting), []
            waiting.clear()
            for i, p in asked.items():
                error = refusal(answer.llm, answer.in_llm or Method(), p)
                if error is None:
                    ready.append(i)
                else:
                    resume(gens, i, error, rows, waiting)
            alone = [i for i in ready if asked[i].positions is not None or asked[i].added]  # one at a time (generate)
            for i in alone:
                resume(gens, i, answer.run(asked[i]), rows, waiting)
            ready = [i for i in ready if i not in alone]
            outs = generate_many(answer.llm, [asked[i] for i in ready], answer.in_llm, decoder=answer.decoder,
                                 batch_decoder=answer.batch_decoder)
            for i, out in zip(ready, outs):
                resume(gens, i, out, rows, waiting)
        share = (time.perf_counter() - t0) / len(chunk)
        for row in rows:
            if "seconds" in row:
                row["seconds"] = share
        yield from rows


def resume(gens, i, value, rows, waiting):
    """Run question i's row generator on: started (value None), sent a Generation, or thrown a ValueError; it stops
    at its next Question (into `waiting`) or at its end (its row into `rows`)."""
    try:
        g = gens[i]
        waiting[i] = g.throw(value) if isinstance(value, ValueError) else next(g) if value is None else g.send(value)
    except StopIteration as done:
        rows[i] = done.value
