"""LLM-VTP, the method: which video tokens to keep (Eq. 4-6), and how the KV cache forgets the rest (Eq. 7-8).

The paper indexes the prompt as [video; question]. Real prompts have a system prompt first, so every index
here is shifted by `VideoSpan.start`:

    prompt rows   0 .. start-1          prefix (system prompt, "USER:", ...): always kept
                  start .. end-1        video, T frames of Nv tokens, frame by frame      (paper: :TNv)
                  end .. N-1            question rows, template words like "ASSISTANT:" included (paper: TNv:)

Dimensions: T frames, Nv tokens per frame, Nq question rows, H heads, N prompt rows, S kept video tokens.

A worked example with made-up scores, 2 frames of 4 tokens, alpha = 0.5 (keep ceil(0.5 * 4) = 2 per frame):

    >>> a_v = torch.tensor([.1, .9, .3, .2,   .5, .1, .1, .6])
    >>> select_per_frame(a_v, VideoSpan(start=3, frames=2, tokens_per_frame=4), alpha=0.5).tolist()
    [4, 5, 7, 10]

Frame 1 keeps its tokens 1 and 2 (scores .9, .3), frame 2 its tokens 0 and 3 (.5, .6); +3 for the prefix.
"""

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from minivtp.model import attention_weights, causal_mask, repeat_kv


@dataclass(frozen=True)
class VideoSpan:
    """Where the video sits in the prompt: `frames * tokens_per_frame` consecutive rows from `start`."""

    start: int
    frames: int  # T
    tokens_per_frame: int  # Nv

    def __post_init__(self):
        for name in ("start", "frames", "tokens_per_frame"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "start" else 1):
                raise ValueError(f"VideoSpan.{name}={value!r} must be an integer >= {0 if name == 'start' else 1}")

    @property
    def end(self) -> int:  # first question row
        return self.start + self.frames * self.tokens_per_frame

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


def n_keep(alpha: float, n: int) -> int:
    """ceil(alpha * n), at least 1.

    subtle: alpha is a decimal that doubles cannot hold exactly, so alpha * n can land a hair above an integer:
    0.55 * 100 = 55.00000000000001 in doubles, whose ceiling is 56, not 55 (0.3 * 10 happens to round to
    exactly 3.0). I round the product to 9 decimals first, so alpha * n that is an integer on paper stays it.
    """
    check_alpha(alpha)
    return max(1, math.ceil(round(alpha * n, 9)))


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
    return A[video.end:, video.start : video.end]  # (Nq, T*Nv)


def video_scores(A_qv):
    """a_v: each video token's attention averaged over all question rows. (Nq, T*Nv) -> (T*Nv,)"""
    return A_qv.mean(dim=0)


def layer_attention(block, x_in, cos, sin, pos, cache, rows=None):
    """Layer M's attention weights A^(M) for the query `rows` (default: all) against every key it cached.

    `x_in` is the layer's input (B=1, N, C). The keys come from the layer's own cache, written by its forward
    pass a moment ago, so nothing is projected twice. Returns (H, len(rows), Nk) float32.
    """
    attn = block.attn
    rows = torch.arange(x_in.shape[1], device=x_in.device) if rows is None else rows
    h = block.attn_norm(x_in[:, rows])  # (1, Nr, C)
    q = attn.query(h, cos[rows], sin[rows])  # (1, H, Nr, D)
    k = repeat_kv(cache.k[:, :, : cache.length], attn.n_heads // attn.n_kv_heads)  # (1, H, Nk, D)
    mask = causal_mask(pos[rows], cache.pos[: cache.length])  # (Nr, Nk)
    return attention_weights(q, k, mask)[0]  # (H, Nr, Nk)


def scores_literal(block, x_in, cos, sin, pos, cache, video, head_pool="max"):
    """The paper step by step: materialise all of A^(M) (H, N, N), pool heads, slice (Eq. 4), average."""
    A = layer_attention(block, x_in, cos, sin, pos, cache)  # (H, N, N)
    A = pool_heads(A, head_pool)  # (N, N)
    return video_scores(question_to_video(A, video))  # (T*Nv,)


def scores_fast(block, x_in, cos, sin, pos, cache, video, head_pool="max"):
    """The same numbers, computing softmax only for the Nq question rows: (H, Nq, N) instead of (H, N, N)."""
    q_rows = torch.arange(video.end, x_in.shape[1], device=x_in.device)
    A_q = pool_heads(layer_attention(block, x_in, cos, sin, pos, cache, q_rows), head_pool)  # (Nq, N)
    return video_scores(A_q[:, video.start : video.end])  # Eq. 4's column slice; its rows are A_q's -> (T*Nv,)


# -------------------------------------------------------------------------------------------------------------
# Selection: Eq. 5 and 6, the whole-sequence variant (Tab. 5), and the two baselines


def select_per_frame(a_v, video: VideoSpan, alpha: float):
    """Eq. 5-6: the top ceil(alpha*Nv) tokens of every frame, as sorted prompt positions. (T*Nv,) -> (T*k,)"""
    T, Nv = video.frames, video.tokens_per_frame
    k = n_keep(alpha, Nv)
    a = rearrange(a_v, "(t n) -> t n", t=T)  # (T, Nv): a_v^(t) for each frame t
    # Eq. 5: S_t = { j | Rank(a_v^(t)(j)) <= ceil(alpha * Nv) }
    S_t = a.topk(k, dim=1).indices  # (T, k), indices j within each frame
    # Eq. 6: S = U_t { (t-1) Nv + j | j in S_t }   (0-based here: t * Nv + j)
    frame_offset = torch.arange(T, device=a_v.device)[:, None] * Nv  # (T, 1)
    S = (frame_offset + S_t).flatten().sort().values  # (T*k,)
    return video.start + S  # prompt positions


def select_whole_sequence(a_v, video: VideoSpan, alpha: float):
    """Tab. 5's alternative: the top ceil(alpha*T*Nv) over the whole video, whatever frame they are in."""
    k = n_keep(alpha, a_v.numel())
    return video.start + a_v.topk(k).indices.sort().values  # (k,)


def select_random(video: VideoSpan, alpha: float, generator=None):
    """Baseline: ceil(alpha*Nv) tokens of every frame, chosen uniformly at random."""
    scores = torch.rand(video.frames * video.tokens_per_frame, generator=generator)
    return select_per_frame(scores, video, alpha)


def complement(S, video: VideoSpan):
    """Baseline "pruned tokens" (Tab. 10): every video token that S drops. May be empty when S keeps all."""
    keep = torch.ones(video.end - video.start, dtype=torch.bool)
    keep[S.cpu() - video.start] = False
    return video.start + keep.nonzero().flatten().to(S.device)


def rows_to_keep(prompt_len: int, video: VideoSpan, S):
    """The prompt rows that go on past layer M: the prefix, the kept video tokens S, all question rows."""
    dev = S.device
    prefix = torch.arange(video.start, device=dev)
    question = torch.arange(video.end, prompt_len, device=dev)
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
