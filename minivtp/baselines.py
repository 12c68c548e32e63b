"""The paper's rivals beside LLM-VTP: FastV, PruMerge+ and Look-M, each in its own section below. LLM-VTP itself
stays alone in vtp.py; this file uses its pieces (VideoSpan, layer_attention, n_keep) and nothing else of it.

The same prompt as vtp.py, and where each method looks to decide what the video keeps:

    prompt rows   0 .. start-1     prefix         kept by all
                  start .. end-1   video          LLM-VTP:   every question row's attention at layer M, top per frame
                                                  FastV:     the LAST prompt row's attention at layer K, top over
                                                             the whole video; layers 1..K keep every row
                                                  PruMerge+: CLIP's [CLS] attention inside the vision tower, per
                                                             frame, before the LLM sees anything; merges the rest in
                                                  Look-M:    after a full prefill, the attention every row received
                                                             in each layer; keeps text first; merges the rest in
                  end .. N-1       question       kept by all (Look-M: text rows first, then recent rows)

A worked example with made-up scores: 2 frames of 4 tokens, keep 2 per frame (LLM-VTP) or 4 in all (FastV).

    >>> video = VideoSpan(start=3, frames=2, tokens_per_frame=4)
    >>> question_rows = torch.tensor([.1, .9, .3, .2,   .5, .1, .1, .6])   # a_v, averaged over question rows
    >>> last_row = torch.tensor([.0, .8, .7, .6,   .5, .0, .0, .1])        # the last prompt row alone
    >>> vtp.select_per_frame(question_rows, video, 0.5).tolist()          # LLM-VTP
    [4, 5, 7, 10]
    >>> vtp.select_whole_sequence(last_row, video, 0.5).tolist()          # FastV: frame 2 nearly empties
    [4, 5, 6, 7]

Where a paper and its public code differ, or applying an image method to video needs a decision, here is what
minivtp does and why. Sources: FastV, Chen et al. 2024, pkunlp-icler/FastV (`fastv_forward` in its
modeling_llama.py); PruMerge+, Shang et al. 2024, 42Shawn/LLaVA-PruMerge (`token_prune_merge_advanced_plus` in
clip_encoder.py); Look-M, Wan et al. 2024, SUSTechBruce/LOOK-M (`TextAVGMergeKVCache_LayerWise` and
`PivotKVCache_LayerWise` in kv_token_merge/modify_llama.py).

FastV
  - Score: the attention of the last prompt row at layer K, averaged over heads (their mean over dim 1, row -1).
  - Count: theirs keeps round(n * (1 - R)) image tokens; ours keeps ceil(alpha * T * Nv) (`n_keep`), so that
    alpha means what it means for LLM-VTP and the two keep the same number of tokens.
  - Video: all T * Nv video tokens are ranked as one image, across frames (FastV has no notion of frames).
  - Positions: kept rows keep theirs (their position_ids = keep_indexs). Layers 1..K keep every row in their
    KV cache: FastV prunes the hidden states only, so `Generation.cache_lens` is N for layers 1..K.
PruMerge+
  - Attention: q and k of the vision block after the feature layer, computed from the feature layer's output,
    all heads as one matrix scaled by Cv^-1/2 (theirs: hooks on layers[23].q_proj / k_proj, `* C ** -0.5`);
    the [CLS] row over the patches.
  - Count: the interquartile-range rule: patches above Q3 + 1.5 (Q3 - Q1) are kept (quartiles interpolated
    linearly, as numpy.percentile does); their count over P is the adaptive ratio r.
  - "+": spatially uniform samples every int(int(1 / r) / 3) patches from 0 to P - 2 (theirs: range(0, 575, .)),
    added where not already kept. Two cases their code does not reach: no outlier (r = 0) keeps the one patch
    with the highest attention; a step of 0 (r > 1/3) becomes 1.
  - Merge: each kept patch becomes itself plus the sum, over its 32 most key-similar other patches (kept or not;
    cosine of keys), of their [CLS] attention times their features: unnormalised, as their code does (the paper
    calls it a weighted average). One extra token, the attention-weighted sum of the pruned patches, is added
    after each frame's patches (none when nothing was pruned).
  - Order: theirs puts the kept patches in order of attention, then the samples; ours keeps raster order, so the
    LLM's positions follow the image as they did before pruning.
  - Video, per frame. Plain LLaVA and Tarsier: on CLIP's patches, merged in CLIP's space before the projector,
    as theirs; Tarsier's row newlines are dropped (the rows are ragged after pruning), its frame separator kept.
    PLLaVA pools (T, 24, 24) to (T', 12, 12) after the projector: the [CLS] attention and the keys are pooled
    with the same adaptive average pooling, PruMerge+ runs on each pooled frame's tokens, and merges in the
    projected space. This is our decision; the paper reports 36.5% of PLLaVA's tokens kept and says no more.
Look-M
  - Prefill: everything, unpruned; the KV cache of each layer is compressed right after that layer has run.
  - Score: the attention each row received, summed over all prompt rows (H2O's accumulated attention) and over
    heads. Theirs keeps a score per head and lets each head keep its own rows; our cache holds one position per
    slot, so all heads keep the same rows.
  - Keep: the int(recent * N) most recent rows, and int(important * N) of the others, every text row before any
    video row (their text prior adds -65516 to video rows' scores), by score within each.
  - Merge: each evicted row into its most key-similar kept row (cosine, per head). "average": the kept row
    becomes the mean of itself and everything merged into it (their scatter_reduce mean, include_self).
    "pivotal": each evicted row is first averaged with its pivot, then the same mean. Keys and values alike,
    with the pivots chosen by the keys. Their averaged variant also computes a similarity threshold and then
    indexes its merge sources inconsistently; we merge every evicted row.
  - Once: theirs evicts again at every decoded token to hold the budget; ours compresses once after prefill and
    lets the cache grow by the decoded tokens, as LLM-VTP's does.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minivtp import vtp
from minivtp.vtp import VideoSpan

# -------------------------------------------------------------------------------------------------------------
# FastV: the last row's attention at layer K, the top tokens over the whole video


def last_row_scores(block, x_in, cos, sin, pos, cache, video: VideoSpan):
    """FastV's score of every video token: the last prompt row's attention at this layer, mean over heads."""
    last = torch.tensor([x_in.shape[1] - 1], device=x_in.device)
    A = vtp.layer_attention(block, x_in, cos, sin, pos, cache, last)  # (H, 1, Nk)
    if video.frame_starts:  # frames separated by text: the video's own columns
        return A.mean(dim=0)[0, video.rows(A.device)]
    return A.mean(dim=0)[0, video.start : video.end]  # (T*Nv,)


def fastv_select(a_v, video: VideoSpan, alpha: float):
    """The top ceil(alpha * T * Nv) video tokens, wherever they are: FastV ranks the video as one image."""
    return vtp.select_whole_sequence(a_v, video, alpha)


# -------------------------------------------------------------------------------------------------------------
# PruMerge+: CLIP's [CLS] attention, outliers by the IQR rule, uniform samples, then merging


def cls_attention(block, h):
    """[CLS]-to-patch attention as PruMerge computes it, and the patches' keys.

    `block` is the vision block after the feature layer, `h` (T, 1+P, Cv) the feature layer's output: its q and
    k, all heads as one matrix, scaled by Cv^-1/2, softmax over [CLS] and the patches. -> (T, P), (T, P, Cv)."""
    x = block.norm1(h)
    q, k = block.wq(x).float(), block.wk(x).float()  # (T, 1+P, Cv)
    A = (q[:, :1] @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (T, 1, 1+P): the [CLS] row only
    return A[:, 0, 1:], k[:, 1:]


def iqr_outliers(a):
    """Indices of the scores above Q3 + 1.5 (Q3 - Q1), by score, highest first. a (P,)"""
    q1, q3 = torch.quantile(a.float(), torch.tensor([0.25, 0.75], device=a.device))
    n = int((a > q3 + 1.5 * (q3 - q1)).sum())
    return a.topk(n).indices


def prumerge_plus_keep(a):
    """PruMerge+'s kept patches of one frame, in raster order: the IQR outliers and the uniform samples. a (P,)"""
    P = a.numel()
    top = iqr_outliers(a)
    if top.numel() == 0:  # no outlier: their ratio would be 0 and 1 / ratio fail; keep the most attended patch
        top = a.argmax().view(1)
    step = max(1, int(P / top.numel()) // 3)  # int(1 / ratio) / 3, as their arange step
    samples = torch.arange(0, P - 1, step, device=a.device)
    keep = torch.zeros(P, dtype=torch.bool, device=a.device)
    keep[top] = True
    keep[samples] = True
    return keep.nonzero().flatten()  # (S,)


def prumerge_merge(x, keys, a, kept, neighbours: int = 32):
    """Each kept patch plus its most key-similar patches weighted by attention; then one token for the pruned.

    x (P, C) features, keys (P, Cv), a (P,) [CLS] attention, kept (S,) -> (S, C), or (S + 1, C) with the extra
    token when some patch was pruned."""
    P = x.shape[0]
    kn = F.normalize(keys.float(), dim=-1)
    sim = kn[kept] @ kn.T  # (S, P) cosine similarity of each kept patch to every patch
    sim[torch.arange(kept.numel()), kept] = float("-inf")  # not itself
    near = sim.topk(min(neighbours, P - 1), dim=-1).indices  # (S, k)
    merged = x[kept].float() + (a[near][..., None] * x[near].float()).sum(dim=1)  # (S, C)
    pruned = torch.ones(P, dtype=torch.bool, device=x.device)
    pruned[kept] = False
    if not pruned.any():
        return merged.to(x.dtype)
    extra = (a[pruned][:, None] * x[pruned].float()).sum(dim=0, keepdim=True)  # (1, C)
    return torch.cat([merged, extra]).to(x.dtype)


def prumerge_plus(x, keys, a):
    """One frame: (tokens (S', C), kept patch indices (S,)). x (P, C), keys (P, Cv), a (P,)."""
    kept = prumerge_plus_keep(a)
    return prumerge_merge(x, keys, a, kept), kept


@dataclass(frozen=True)
class MergedVideo:
    """Where a video pruned before the LLM (PruMerge+) sits: frames of different lengths, so no VideoSpan."""

    start: int
    tokens_per_frame: tuple  # rows of each frame, its extra token (and Tarsier's separator) included
    unpruned_rows: int  # what the same video takes unpruned

    @property
    def end(self) -> int:
        return self.start + sum(self.tokens_per_frame)

    @property
    def kept_ratio(self) -> float:
        return (self.end - self.start) / self.unpruned_rows


# -------------------------------------------------------------------------------------------------------------
# Look-M: prefill everything, then per layer keep text and recent rows first, and merge the evicted rows in


MERGES = ("average", "pivotal", "none")


def check_method(method):
    """What generate.Method's fields mean only for a rival, checked here beside the rival (ValueError if wrong)."""
    if method.name == "prumerge+":
        raise ValueError("method='prumerge+' prunes in the vision tower, before the LLM: build the prompt with "
                         "VideoLLM.prompt(ids, pixels, prumerge=True) and generate with video=None")
    for name in ("recent", "important"):
        if not 0.0 <= getattr(method, name) <= 1.0:
            raise ValueError(f"{name}={getattr(method, name)} is outside [0, 1]: a fraction of the prompt's rows")
    if method.recent + method.important == 0:
        raise ValueError("recent=0 and important=0 would keep no row at all")
    if method.merge not in MERGES:
        raise ValueError(f"merge={method.merge!r} must be one of {', '.join(map(repr, MERGES))}")


def received_attention(block, x_in, cos, sin, pos, cache, chunk: int = 512):
    """(Nk,): the attention each cached row received at this layer, summed over every query row and head.

    Query rows go `chunk` at a time, so the (H, N, N) matrix is never whole in memory."""
    total = torch.zeros(cache.length, device=x_in.device)
    for rows in torch.arange(x_in.shape[1], device=x_in.device).split(chunk):
        total += vtp.layer_attention(block, x_in, cos, sin, pos, cache, rows).sum(dim=(0, 1))
    return total


def look_m_rows(scores, video: VideoSpan, recent: float, important: float):
    """(kept rows, evicted rows), each sorted, of a prompt of N = len(scores) rows."""
    N = scores.numel()
    dev = scores.device
    n_recent, n_important = int(N * recent), int(N * important)
    if n_recent + n_important >= N:
        return torch.arange(N, device=dev), torch.empty(0, dtype=torch.long, device=dev)
    older = torch.arange(N - n_recent, device=dev)
    is_video = (older >= video.start) & (older < video.end)
    if video.frame_starts:  # frames separated by text: that text is not video
        is_video = torch.isin(older, video.rows(dev))
    by_score = scores[:N - n_recent].argsort(descending=True, stable=True)
    # the text prior: text rows before every video row, by score within each (a stable sort keeps that order)
    ranked = by_score[is_video[by_score].int().argsort(stable=True)]
    kept = torch.cat([ranked[:n_important], torch.arange(N - n_recent, N, device=dev)]).sort().values
    evicted = ranked[n_important:].sort().values
    return kept, evicted


def merge_evicted(cache, kept, evicted, how: str = "average"):
    """Compress one layer's cache to `kept` (Eq. 7-8's row selection), merging each evicted row into its most
    key-similar kept row first (per head), unless how == "none"."""
    n = kept.numel()
    merged = None
    if how != "none" and evicted.numel():
        k, v = cache.k[:, :, : cache.length].float(), cache.v[:, :, : cache.length].float()  # (1, Hkv, N, D)
        k_kept, k_gone = k[:, :, kept], k[:, :, evicted]
        sim = F.normalize(k_gone, dim=-1) @ F.normalize(k_kept, dim=-1).transpose(-1, -2)  # (1, Hkv, Ne, Nkept)
        pivot = sim.argmax(dim=-1)[..., None].expand_as(k_gone)  # (1, Hkv, Ne, D): where each evicted row goes
        merged = []
        for t in (k, v):
            into, gone = t[:, :, kept], t[:, :, evicted]
            if how == "pivotal":  # each evicted row first meets its pivot halfway
                gone = (gone + into.gather(2, pivot)) / 2
            merged.append(into.scatter_reduce(2, pivot, gone, reduce="mean", include_self=True))
    cache.keep(kept)
    if merged is not None:
        cache.k[:, :, :n], cache.v[:, :, :n] = merged[0].to(cache.k.dtype), merged[1].to(cache.v.dtype)


def look_m_prefill(model, x, cos, sin, pos, caches, video: VideoSpan, method, added=None):
    """Look-M's prefill: every layer on every row, each layer's cache compressed right after that layer ran.
    Returns the last layer's output (1, N, C) and what layer 1's cache kept: (video rows S, rows, its scores)."""
    kept = None
    for l in range(len(model.layers)):
        x_in, x = x, model.forward_layers(x, cos, sin, pos, caches, start=l, stop=l + 1, added=added)  # layer l+1
        scores = received_attention(model.layers[l], x_in, cos, sin, pos, caches[l])  # (N,)
        rows, evicted = look_m_rows(scores, video, method.recent, method.important)
        merge_evicted(caches[l], rows, evicted, method.merge)
        if l == 0:
            kept = rows[torch.isin(rows, video.rows(rows.device))], rows, scores[video.rows(scores.device)]
    return x, kept
