"""Prefill with LLM-VTP, then decode from the smaller cache. Three small functions: prefill, decode_one_token,
generate.

    out = generate(model, embeds, 64, video=VideoSpan(35, 16, 144), alpha=0.1, layer=10)
    out.tokens, out.kept, out.cache_len

Prefill runs layers 1..M on the whole prompt. At layer M it scores the video tokens by the question's
attention (Eq. 4-6), then only the prefix, the kept video rows and the question rows go on to layers
M+1..L, and the caches of layers 1..M drop the other rows (Eq. 7-8). Positions travel with the rows: a kept
token keeps its RoPE position, and the first generated token sits at the *original* prompt length (M-RoPE hosts,
whose positions are (t, h, w): a kept token keeps its three, the first generated token sits at the largest + 1).
"""

import functools
import time
from dataclasses import dataclass, fields, replace

import torch

from minivtp import vtp

PAPER_LAYER = 10  # M used for PLLaVA and Tarsier multiple-choice runs (Sec. 4.3)
METHODS = ("llm-vtp", "random", "complement")  # LLM-VTP and its two baselines; the rivals: minivtp/rivals/
HEAD_POOLS = ("max", "mean", "min")
RANKINGS = ("frame", "sequence")
SCORES = ("fast", "literal")


@dataclass(frozen=True)
class Method:
    """Which video tokens go on past layer M, and how they are chosen: one small value instead of a dozen keywords.

        Method(alpha=0.1, layer=10)                 # LLM-VTP as the paper runs PLLaVA on multiple choice
        Method("random", alpha=0.1, layer=2)        # a baseline: the same count per frame, chosen at random
        Method(alpha=0.1, layer=2, ranking="sequence", head_pool="mean")   # the ablations of Tab. 5 and 6
        Method(alpha=0.1, variant="released")       # LLM-VTP as the authors' code runs it (vtp.VARIANTS)
        Method(alpha=0.1, rope="before")            # the paper's rule with one of the released code's switches

    alpha=1 keeps every video token. `layer=None` means the paper's M=10. The rivals (FastV, Look-M, PruMerge+)
    are methods of their own, with their own options, in minivtp/rivals/.
    """

    name: str = "llm-vtp"  # see METHODS: "random" keeps the same per-frame count, "complement" what LLM-VTP drops
    alpha: float = 1.0  # fraction of the video's tokens kept, (0, 1]: per frame (or over the video: ranking)
    layer: int = None  # M, counted from 1
    head_pool: str = "max"  # how A^(M)'s heads become one matrix (Tab. 6)
    ranking: str = "frame"  # top ceil(alpha*Nv) per frame (Eq. 5), or over the whole video (Tab. 5)
    scores: str = "fast"  # "literal" materialises all of A^(M) and slices it as Eq. 4 writes
    variant: str = "paper"  # LLM-VTP as the paper writes it or as its "released" code runs it (vtp.VARIANTS)
    rope: str = None  # scores from q, k with RoPE ("after") or without ("before"); None: the variant's
    causal: bool = None  # Eq. 3's causal mask on the scores (True) or none (False); None: the variant's
    question_pool: str = None  # a_v as the "mean" over question rows (Eq. 4) or their "max"; None: the variant's
    count: str = None  # per frame "ceil" keeps ceil(alpha*Nv) (Eq. 5), "floor" int(Nv*alpha), maybe 0; None: variant's

    @classmethod
    def from_keywords(cls, method=None, **kw) -> "Method":
        """generate's keywords as one Method: `method` is a Method or a rival (then no other keyword), or a name."""
        if method is not None and not isinstance(method, str):
            if kw:
                raise ValueError(f"give either method=Method(...) or keywords ({', '.join(kw)}), not both")
            return method
        unknown = sorted(set(kw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keyword {', '.join(unknown)}: a Method takes "
                             f"{', '.join(f.name for f in fields(cls) if f.name != 'name')} (and the method's name)")
        return cls(method or "llm-vtp", **kw)

    def resolved(self, n_layers: int) -> "Method":
        """This method with M filled in and every field checked against a model of `n_layers` layers."""
        if self.name not in METHODS:
            raise ValueError(f"method={self.name!r} must be one of {', '.join(map(repr, METHODS))} (the rivals FastV, "
                             "Look-M and PruMerge+ are methods of their own: minivtp/rivals/)")
        layer = self.layer
        if layer is None:
            if n_layers < PAPER_LAYER:
                raise ValueError(f"layer must be given: the default M={PAPER_LAYER} is outside 1..{n_layers}")
            layer = PAPER_LAYER
        if not (isinstance(layer, int) and 1 <= layer <= n_layers):
            raise ValueError(f"layer={layer!r} is outside 1..{n_layers} (M counts decoder layers from 1, as in the paper)")
        vtp.check_alpha(self.alpha)
        for name, value, allowed in (("head_pool", self.head_pool, HEAD_POOLS),
                                     ("ranking", self.ranking, RANKINGS), ("scores", self.scores, SCORES)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, allowed))}")
        if self.variant not in vtp.VARIANTS:
            raise ValueError(f"variant={self.variant!r} must be one of {', '.join(map(repr, vtp.VARIANTS))}")
        switches = {k: getattr(self, k) if getattr(self, k) is not None else v
                    for k, v in vtp.VARIANTS[self.variant].items()}  # a field given overrides its variant
        for name, value in switches.items():
            if value not in vtp.SWITCHES[name]:
                raise ValueError(f"{name}={value!r} must be one of {', '.join(map(repr, vtp.SWITCHES[name]))}")
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
    kept: torch.Tensor  # (S,) sorted prompt positions of the kept video tokens (alpha=1: all; video=None: none)
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
def prefill(model, embeds, caches, video=None, method=None, generator=None, decoder=None, positions=None, added=None,
            **keywords):
    """Run the prompt (1, N, C) through every layer, pruning at layer M. Returns (last row's logits (V,), Pruning).

    `method` is a Method (or its name, with the keywords of Method: alpha=, layer=, ...). Layers M+1..L run
    through `decoder.rest` when a decoder is given (see generate), through model.forward_layers otherwise.
    `positions`: what RoPE turns each row by, (N,) or M-RoPE's (3, N); default the rows' own 0..N-1. `added`:
    {layer i: (N, C)} added to the hidden states after layer i+1 (Qwen3-VL's DeepStack, model.forward_layers)."""
    method = Method.from_keywords(method, **keywords).resolved(model.cfg.n_layers)
    if video is not None and not isinstance(video, vtp.VideoSpan):
        raise ValueError(f"video must be a VideoSpan, got {type(video).__name__} (a video PruMerge+ already pruned "
                         "goes to generate with video=None)")
    N = embeds.shape[1]
    pos = torch.arange(N, device=embeds.device)  # (N,) positions; after layer M only the kept ones remain
    # subtle: under M-RoPE a row's rotation is not its row: `pos` orders the rows (the causal mask, the caches),
    # `positions` turns them; cos and sin are per row, so a kept row keeps its (t, h, w) rotation after pruning
    cos, sin = model.rope(pos if positions is None else positions)
    if video is None:  # nothing to prune: every layer on every row
        x = model.forward_layers(embeds, cos, sin, pos, caches, added=added)
        return model.head(x[:, -1:])[0, -1], None
    M = method.layer
    x_in = model.forward_layers(embeds, cos, sin, pos, caches, stop=M - 1, added=added)  # layers 1..M-1, every row
    x = model.forward_layers(x_in, cos, sin, pos, caches, start=M - 1, stop=M, added=added)  # layer M; x_in scores
    block, cache = model.layers[M - 1], caches[M - 1]
    score = vtp.scores_fast if method.scores == "fast" else vtp.scores_literal
    a_v = score(block, x_in, cos, sin, pos, cache, video, method.head_pool, method.rope, method.causal,
                method.question_pool)  # Eq. 4; question_pool: the paper's mean or the released max
    S = choose(method, a_v, video, generator)  # Eq. 5-6
    rows = vtp.rows_to_keep(N, video, S)  # prefix + S + question rows
    x, pos, cos, sin = vtp.drop_rows(x, pos, cos, sin, caches[:M], rows)  # layers M+1..L; Eq. 7-8 on 1..M
    if added:  # DeepStack's features still to come (after layers M+1..) go with their rows
        added = {i: a[rows] for i, a in added.items() if i >= M}
        x = model.forward_layers(x, cos, sin, pos, caches, M, added=added)  # layers M+1..L on the kept rows
        return model.head(x[:, -1:])[0, -1], Pruning(layer=M, kept=S, rows=rows, scores=a_v)
    rest = model.forward_layers if decoder is None else decoder.rest  # the same function, or its fast twin
    x = rest(x, cos, sin, pos, caches, M)  # layers M+1..L on the kept rows
    return model.head(x[:, -1:])[0, -1], Pruning(layer=M, kept=S, rows=rows, scores=a_v)  # (V,)


@torch.no_grad()
def decode_one_token(model, token, pos: int, caches, rope_pos: int = None):
    """One new token at position `pos`, appended after the last filled row of every cache. Returns logits (V,).
    `rope_pos`: where RoPE puts it when that is not `pos` (M-RoPE: the largest prompt position + 1 + i)."""
    # subtle: after pruning a cache holds fewer rows than `pos` says came before (and under FastV the layers do
    # not even agree on how many), so each cache appends after its own last row; the position is the same for
    # all: the original prompt length plus the tokens decoded so far
    p = torch.tensor([pos], device=token.device)  # (1,)
    r = None if rope_pos is None else torch.tensor([rope_pos], device=token.device)  # a text token: t = h = w
    return model.forward_embeds(model.embed(token.view(1, 1)), p, caches, r)[0, -1]


def pick(logits, temperature: float, generator=None):
    """The next token: the argmax (temperature 0), or a draw from softmax(logits / temperature)."""
    if temperature == 0:
        return logits.argmax()
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()  # the seeded generator lives on the CPU
    return torch.multinomial(probs, 1, generator=generator)[0].to(logits.device)


def clock(device) -> float:  # wall-clock seconds, after the GPU has finished what it was given
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def check_prompt(model, embeds, max_new_tokens: int, video=None):
    """What generate refuses before it prefills: a prompt not (1, N, C), a video outside it, no room to answer."""
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise ValueError(f"embeds must be (1, N, C), got {tuple(embeds.shape)}")
    N = embeds.shape[1]
    if isinstance(video, vtp.VideoSpan):
        video.check(N)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if N + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt {N} + max_new_tokens {max_new_tokens} = {N + max_new_tokens} exceeds the "
                         f"model's {model.cfg.max_seq_len} positions")


@torch.no_grad()
def generate(model, embeds, max_new_tokens: int, video=None, method=None, *, temperature=0.0, eos_id=None, seed=0,
             decoder=None, positions=None, added=None, **keywords) -> Generation:
    """Answer a prompt of embeddings (1, N, C), pruning at layer M when `video` (a VideoSpan) is given.

        generate(model, embeds, 64, video=VideoSpan(35, 16, 144), alpha=0.1, layer=10)
        generate(model, embeds, 64, video=span, method=Method("random", alpha=0.1, layer=10))

    The pruning is a Method, or its keywords (alpha=, layer=, head_pool=, ranking=, scores=, ...); alpha=1 keeps
    every video token, video=None skips scoring. Greedy unless temperature > 0. A rival of minivtp/rivals/
    (FastV, Look-M) is passed as `method` too, and brings its own prefill in place of this file's.

    `decoder` is where the fast path plugs in (minivtp/fast/__init__.py's FastDecoder, made for this model): an object
    with `model`, `rest(x, cos, sin, pos, caches, start)` in place of model.forward_layers for layers M+1..L,
    and `steps(caches, new_tokens)`, a function (token, position) -> logits in place of decode_one_token. The
    same numbers, faster on a GPU. None: the functions of this file, as written.

    `positions` (N,) or (3, N), and `added`: the host's RoPE positions and DeepStack rows (see prefill).
    """
    check_prompt(model, embeds, max_new_tokens, video)
    N = embeds.shape[1]
    method = Method.from_keywords(method, **keywords)
    if video is None and isinstance(method, Method) and method.layer is None:
        method = replace(method, layer=1)  # nothing is pruned; any valid M will do
    method = method.resolved(model.cfg.n_layers)
    if decoder is not None and decoder.model is not model:
        raise ValueError("the decoder was made for another model: make one per model")
    if positions is not None and positions.shape[-1] != N:
        raise ValueError(f"positions {tuple(positions.shape)} must give each of the {N} prompt rows a position")
    if decoder is not None and (positions is not None or added):
        raise ValueError("decoder= decodes rows whose rotation is their row: a prompt with M-RoPE positions or "
                         "DeepStack rows decodes with decoder=None")
    rope_next = N if positions is None else int(positions.max()) + 1  # transformers' rope_deltas: the next token's
    generator = torch.Generator().manual_seed(seed)
    caches = model.new_caches(batch=1, max_len=N + max_new_tokens)
    t0 = clock(embeds.device)
    x = embeds.to(model.embed.weight.dtype)
    if video is None or isinstance(method, Method):
        logits, pruning = prefill(model, x, caches, video, method, generator, decoder, positions, added)
    else:  # a rival of minivtp/rivals/ brings its own prefill
        logits, pruning = method.prefill(model, x, caches, video, generator, decoder, positions, added)
    cache_len, cache_lens = caches[0].length, [c.length for c in caches]
    t1 = clock(embeds.device)
    if decoder is None:
        step = functools.partial(decode_one_token, model, caches=caches)  # step(token, pos)
    else:
        step = decoder.steps(caches, max_new_tokens)
    tokens, all_logits = [], []
    for i in range(max_new_tokens):
        token = pick(logits, temperature, generator)
        tokens.append(token)
        all_logits.append(logits)
        if (eos_id is not None and token.item() == eos_id) or i == max_new_tokens - 1:
            break
        # subtle: the new token's position goes on from N, the unpruned prompt length, not from the cache's rows
        # (under M-RoPE its rotation goes on from the largest prompt position + 1, pruned or not)
        logits = step(token, N + i) if rope_next == N else step(token, N + i, rope_pos=rope_next + i)
    t2 = clock(embeds.device)
    kept = pruning.kept if pruning else torch.empty(0, dtype=torch.long)  # video=None: nothing was scored
    return Generation(tokens=torch.stack(tokens), logits=torch.stack(all_logits), kept=kept, cache_len=cache_len,
                      prompt_len=N, cache_lens=cache_lens, pruning=pruning, prefill_s=t1 - t0, decode_s=t2 - t1)
