"""LLM-VTP, the method: which video tokens to keep (Eq. 4-6), and how the KV cache forgets the rest (Eq. 7-8).

The paper indexes the prompt as [video; question]. Real prompts have a system prompt first, so every index
here is shifted by `VideoSpan.start`:

    prompt rows   0 .. start-1          prefix (system prompt, "USER:", ...): always kept
                  start .. end-1        video, T frames of Nv tokens, frame by frame      (paper: :TNv)
                  end .. N-1            question rows, template words like "ASSISTANT:" included (paper: TNv:)

Frames separated by text (Qwen3-VL writes "<0.5 seconds>" before each temporal group) name where each begins,
VideoSpan.frame_starts; the text between them is kept like the prefix and never ranked:

    prompt rows   0 .. start-1                            prefix
                  frame_starts[0] .. +Nv-1                frame 0
                  ..                                      "<1.0 seconds>": kept, not scored, not ranked
                  frame_starts[1] .. +Nv-1                frame 1
                  ...
                  end .. N-1  (end = frame_starts[-1] + Nv)   question rows

Dimensions: T frames, Nv tokens per frame, Nq question rows, H heads, N prompt rows, S kept video tokens.

A worked example with made-up scores, 2 frames of 4 tokens, alpha = 0.5 (keep ceil(0.5 * 4) = 2 per frame):

    >>> a_v = torch.tensor([.1, .9, .3, .2,   .5, .1, .1, .6])
    >>> select_per_frame(a_v, VideoSpan(start=3, frames=2, tokens_per_frame=4), alpha=0.5).tolist()
    [4, 5, 7, 10]

Frames and tokens are counted from 0, as everywhere in minivtp (the paper counts frames from 1, Eq. 6's
(t-1) Nv): frame 0 keeps its tokens 1 and 2 (scores .9, .3), frame 1 its tokens 0 and 3 (.5, .6); then +3 for
the prefix, and +4 for frame 1's offset.

The authors' released code (Visual-AI/PruneVid, models/pllava/llama.py and elastic_cache.py) scores and counts
differently in four places. Each is a switch here, beside the paper's line (VARIANTS, tutorial chapter 12):

    switch          paper (Sec. 3.2.1)                       released code
    rope            q, k with RoPE, as Eq. 3 attends         q, k before RoPE              (llama.py:447)
    causal          Eq. 3's causal mask m                    no mask: every row sees all N (llama.py:448)
    question_pool   mean over the question rows              max over them                 (elastic_cache.py:125)
    count           ceil(alpha*Nv), at least 1               int(Nv*alpha), may be 0       (elastic_cache.py:136)

The same made-up frame under the released count: int(4 * 0.5) = 2, as ceil; at alpha = 0.2, int(0.8) = 0, and
the frame keeps nothing, which the released code does without a word (torch.topk with k=0):

    >>> select_per_frame(a_v, VideoSpan(start=3, frames=2, tokens_per_frame=4), alpha=0.2, count="floor").tolist()
    []
"""

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from minivtp.model import attention_weights, causal_mask, repeat_kv


@dataclass(frozen=True)
class VideoSpan:
    """Where the video sits in the prompt: `frames * tokens_per_frame` consecutive rows from `start`.

    Frames separated by text (Qwen3-VL writes a timestamp before each) give `frame_starts`, the row each frame
    begins at; the rows between frames are then neither video nor question: kept like the prefix, never ranked.

        VideoSpan(3, 2, 4)                         video rows 3..10                        (end = 11)
        VideoSpan(3, 2, 4, frame_starts=(3, 10))   video rows 3..6 and 10..13; 7..9 text   (end = 14)
    """

    start: int
    frames: int  # T
    tokens_per_frame: int  # Nv
    frame_starts: tuple = ()  # () : one run, frame t from start + t * Nv

    def __post_init__(self):
        for name in ("start", "frames", "tokens_per_frame"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "start" else 1):
                raise ValueError(f"VideoSpan.{name}={value!r} must be an integer >= {0 if name == 'start' else 1}")
        s = self.frame_starts
        if s and (len(s) != self.frames or s[0] != self.start
                  or any(b < a + self.tokens_per_frame for a, b in zip(s, s[1:]))):
            raise ValueError(f"VideoSpan.frame_starts={s!r} must give each of the {self.frames} frames its first row, "
                             f"from start={self.start}, each at least tokens_per_frame={self.tokens_per_frame} after "
                             "the one before")

    @property
    def end(self) -> int:  # first question row
        if self.frame_starts:
            return self.frame_starts[-1] + self.tokens_per_frame
        return self.start + self.frames * self.tokens_per_frame

    def rows(self, device=None):
        """(T*Nv,) the prompt rows of the video tokens, frame by frame: start..end-1 when the frames are one run."""
        starts = torch.tensor(self.frame_starts or range(self.start, self.end, self.tokens_per_frame), device=device)
        return (starts[:, None] + torch.arange(self.tokens_per_frame, device=device)).flatten()

    def check(self, prompt_len: int, video_rows: int = None):
        """Raise ValueError unless the span fits a prompt of `prompt_len` rows with question rows after it.

        `video_rows`, when the caller knows how many video embeddings it placed, must equal T * Nv."""
        T, Nv = self.frames, self.tokens_per_frame
        if video_rows is not None and video_rows != T * Nv:
            raise ValueError(f"frames*tokens_per_frame = {T}*{Nv} = {T * Nv} does not match the {video_rows} "
                             "video rows in the prompt")
        if self.end > prompt_len:
            raise ValueError(f"video span rows {self.start}..{self.end - 1} run past the prompt "
                             f"(prompt rows 0..{prompt_len - 1})")
        if self.end == prompt_len:
            raise ValueError(f"no question rows after the video (it ends at row {self.end - 1}, the last prompt "
                             "row): LLM-VTP needs question rows to score the video")


def check_alpha(alpha: float):
    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha={alpha} is outside (0, 1]: it is the fraction of video tokens kept")


def n_keep(alpha: float, n: int, count: str = "ceil") -> int:
    """ceil(alpha * n), at least 1 (Eq. 5). count="floor": int(n * alpha), the released code's, which may be 0.

    subtle: alpha is a decimal that doubles cannot hold exactly, so alpha * n can land a hair above an integer:
    0.55 * 100 = 55.00000000000001 in doubles, whose ceiling is 56, not 55 (0.3 * 10 happens to round to
    exactly 3.0). I round the product to 9 decimals first, so alpha * n that is an integer on paper stays it.
    """
    check_alpha(alpha)
    if count == "floor":
        # released: elastic_cache.py:136 (and :142), `int(static_size * alpha)`: the double product truncated, no
        # rounding and no minimum, so 0.29 * 100 keeps 28 and 0.1 * 9 keeps 0 (a frame with no token left)
        return int(n * alpha)
    if count != "ceil":
        raise ValueError(f"count={count!r} must be 'ceil' (the paper) or 'floor' (the released code)")
    return max(1, math.ceil(round(alpha * n, 9)))


# The four switches, as the paper writes the rule and as the released code runs it. generate.Method(variant=...)
# sets all four; each Method field flips one alone.
VARIANTS = {
    "paper": dict(rope="after", causal=True, question_pool="mean", count="ceil"),
    "released": dict(rope="before", causal=False, question_pool="max", count="floor"),
}
SWITCHES = {"rope": ("after", "before"), "causal": (True, False), "question_pool": ("mean", "max"),
            "count": ("ceil", "floor")}


# -------------------------------------------------------------------------------------------------------------
# Scoring: from layer M's attention to one score per video token


def pool_heads(A, how: str = "max"):
    """A^(M) over heads, element-wise: (H, N, Nk) -> (N, Nk). Max is the paper's default (Tab. 6)."""
    if how == "max":
        return A.amax(dim=0)
    if how == "mean":
        return A.mean(dim=0)
    if how == "min":
        return A.amin(dim=0)
    raise ValueError(f"head_pool={how!r} must be one of 'max', 'mean', 'min'")


def question_to_video(A, video: VideoSpan):
    """Eq. 4: A_qv = A[TNv:, :TNv], the question rows x video columns of the full (N, N) matrix.

    With a prefix before the video, "TNv:" becomes "end:" and ":TNv" becomes "start:end"."""
    if video.frame_starts:  # frames separated by text (Qwen3-VL's timestamps): the video's own columns
        return A[video.end:][:, video.rows(A.device)]
    return A[video.end:, video.start : video.end]  # (Nq, T*Nv)


def video_scores(A_qv, question_pool: str = "mean"):
    """a_v: each video token's attention averaged over all question rows. (Nq, T*Nv) -> (T*Nv,)"""
    if question_pool == "max":
        # released: elastic_cache.py:125, `.max(dim=0)[0].max(dim=0)[0]`: heads by a max, then the rows by a max
        return A_qv.amax(dim=0)
    if question_pool != "mean":
        raise ValueError(f"question_pool={question_pool!r} must be 'mean' (the paper) or 'max' (the released code)")
    return A_qv.mean(dim=0)


def layer_attention(block, x_in, cos, sin, pos, cache, rows=None, rope="after", causal=True):
    """Layer M's attention weights A^(M) for the query `rows` (default: all) against every key it cached.

    `x_in` is the layer's input (B=1, N, C). The keys come from the layer's own cache, written by its forward
    pass a moment ago, so nothing is projected twice. Returns (H, len(rows), Nk) float32.

    rope="before" and causal=False are the released code's scores (see VARIANTS): q and k without their RoPE
    rotation, and every row's softmax over all N keys, later ones included. The cache holds keys with RoPE, so
    the keys before it are projected again from `x_in`, all N rows of them: the unmasked softmax needs every key.
    """
    attn = block.attn
    rows = torch.arange(x_in.shape[1], device=x_in.device) if rows is None else rows
    n_rep = attn.n_heads // attn.n_kv_heads
    h = block.attn_norm(x_in[:, rows])  # (1, Nr, C)
    if rope == "after":
        q = attn.query(h, cos[rows], sin[rows])  # (1, H, Nr, D)
        k = repeat_kv(cache.k[:, :, : cache.length], n_rep)  # (1, H, Nk, D)
        k_pos = cache.pos[: cache.length]  # (Nk,)
    elif rope == "before":
        # released: llama.py:447, `attn_weights_wo_pos` from query_states, key_states before apply_rotary_pos_emb
        # (it has no repeat_kv there, so it runs only where Hkv = H, as in Vicuna-7B; here the kv heads repeat)
        q = attn.q_heads(attn.wq(h))  # (1, H, Nr, D), no RoPE (Qwen3: after its per-head norm)
        k = repeat_kv(attn.k_heads(attn.wk(block.attn_norm(x_in))), n_rep)  # (1, H, N, D)
        k_pos = pos  # (N,)
    else:
        raise ValueError(f"rope={rope!r} must be 'after' (the paper) or 'before' (the released code)")
    if causal:
        mask = causal_mask(pos[rows], k_pos)  # (Nr, Nk), Eq. 3's m
    else:
        # released: llama.py:448, the softmax of attn_weights_wo_pos with no attention_mask added
        mask = torch.ones(len(rows), k_pos.shape[0], dtype=torch.bool, device=x_in.device)  # (Nr, Nk)
    return attention_weights(q, k, mask)[0]  # (H, Nr, Nk)


def scores_literal(block, x_in, cos, sin, pos, cache, video, head_pool="max", rope="after", causal=True,
                   question_pool="mean"):
    """The paper step by step: materialise all of A^(M) (H, N, N), pool heads, slice (Eq. 4), average."""
    A = layer_attention(block, x_in, cos, sin, pos, cache, None, rope, causal)  # (H, N, N)
    A = pool_heads(A, head_pool)  # (N, N)
    return video_scores(question_to_video(A, video), question_pool)  # (T*Nv,)


def scores_fast(block, x_in, cos, sin, pos, cache, video, head_pool="max", rope="after", causal=True,
                question_pool="mean"):
    """The same numbers, computing softmax only for the Nq question rows: (H, Nq, N) instead of (H, N, N).
    Each row's softmax is its own, so the other rows are not needed, masked or not; its keys are all N."""
    q_rows = torch.arange(video.end, x_in.shape[1], device=x_in.device)
    A_q = layer_attention(block, x_in, cos, sin, pos, cache, q_rows, rope, causal)  # (H, Nq, N)
    A_q = pool_heads(A_q, head_pool)  # (Nq, N)
    if video.frame_starts:  # frames separated by text: the video's own columns
        return video_scores(A_q[:, video.rows(A_q.device)], question_pool)
    return video_scores(A_q[:, video.start : video.end], question_pool)  # Eq. 4's column slice -> (T*Nv,)


# -------------------------------------------------------------------------------------------------------------
# Selection: Eq. 5 and 6, the whole-sequence variant (Tab. 5), and the two baselines


def select_per_frame(a_v, video: VideoSpan, alpha: float, count: str = "ceil"):
    """Eq. 5-6: the top ceil(alpha*Nv) tokens of every frame, as sorted prompt positions. (T*Nv,) -> (T*k,)

    count="floor" keeps int(Nv*alpha) instead, as the released code does; when that is 0 (alpha*Nv < 1) every
    frame keeps nothing and S is empty: the video is gone after layer M, and the released code does the same."""
    T, Nv = video.frames, video.tokens_per_frame
    k = n_keep(alpha, Nv, count)
    a = rearrange(a_v, "(t n) -> t n", t=T)  # (T, Nv): a_v^(t) for each frame t
    # Eq. 5: S_t = { j | Rank(a_v^(t)(j)) <= ceil(alpha * Nv) }
    S_t = a.topk(k, dim=1).indices  # (T, k), indices j within each frame
    # Eq. 6: S = U_t { (t-1) Nv + j | j in S_t }   (the paper's t = 1..T; ours t = 0..T-1, so t * Nv + j)
    frame_offset = torch.arange(T, device=a_v.device)[:, None] * Nv  # (T, 1)
    S = (frame_offset + S_t).flatten().sort().values  # (T*k,)
    if video.frame_starts:  # frames separated by text: token j of frame t sits at frame_starts[t] + j
        return video.rows(S.device)[S]
    return video.start + S  # prompt positions


def select_whole_sequence(a_v, video: VideoSpan, alpha: float, count: str = "ceil"):
    """Tab. 5's alternative: the top ceil(alpha*T*Nv) over the whole video, whatever frame they are in."""
    k = n_keep(alpha, a_v.numel(), count)
    S = a_v.topk(k).indices.sort().values  # (k,)
    return video.rows(S.device)[S] if video.frame_starts else video.start + S


def select_random(video: VideoSpan, alpha: float, generator=None, count: str = "ceil"):
    """Baseline: ceil(alpha*Nv) tokens of every frame, chosen uniformly at random."""
    scores = torch.rand(video.frames * video.tokens_per_frame, generator=generator)
    return select_per_frame(scores, video, alpha, **({} if count == "ceil" else dict(count=count)))


def complement(S, video: VideoSpan):
    """Baseline "pruned tokens" (Tab. 10): every video token that S drops. May be empty when S keeps all."""
    rows = video.rows()  # (T*Nv,)
    return rows[~torch.isin(rows, S.cpu())].to(S.device)


def rows_to_keep(prompt_len: int, video: VideoSpan, S):
    """The prompt rows that go on past layer M: the prefix, the kept video tokens S, all question rows."""
    dev = S.device
    prefix = torch.arange(video.start, device=dev)
    question = torch.arange(video.end, prompt_len, device=dev)
    if video.frame_starts:  # the text between frames (Qwen3-VL's timestamps) is kept, as the prefix is
        between = torch.arange(video.start, video.end, device=dev)
        return torch.cat([prefix, S, between[~torch.isin(between, video.rows(dev))], question]).sort().values
    return torch.cat([prefix, S, question])  # sorted, since S is sorted and inside the video span


# -------------------------------------------------------------------------------------------------------------
# Eq. 7-8: compressing the KV cache of layers 1..M


def compress_caches(caches, rows):
    """Eq. 7-8: K~ = [K_v[S]; K_q], V~ = [V_v[S]; V_q] in every given layer's cache (prefix rows kept too)."""
    # Eq. 7: K~_v = K_v[S, :], V~_v = V_v[S, :]. Eq. 8: K~ = [K~_v; K_q], V~ = [V~_v; V_q].
    # `rows` holds the prefix, S and the question rows in order, so one row selection is both equations.
    for cache in caches:
        cache.keep(rows)


def drop_rows(x, pos, cos, sin, caches, rows):
    """The step at layer M. Only `rows` go on to layers M+1..L (Sec. 3.2.1): the hidden states (1, N, C), their
    positions and RoPE tables. The caches of layers 1..M (`caches`, all of them, not only layer M's) keep the
    same rows (Eq. 7-8), so a decoded token sees the same prompt in every layer.

    subtle: positions are selected, not renumbered: kept row 57 stays at position 57 for RoPE and the mask."""
    compress_caches(caches, rows)
    return x[:, rows], pos[rows], cos[rows], sin[rows]
