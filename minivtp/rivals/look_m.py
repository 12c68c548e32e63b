"""Look-M (Wan et al. 2024): prefill everything, then compress every layer's KV cache right after that layer ran:
keep the text rows and the most recent ones first, and merge the evicted rows into their most similar kept rows.

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
from minivtp.generate import Pruning
from minivtp.vtp import VideoSpan

MERGES = ("average", "pivotal", "none")


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


@dataclass(frozen=True)
class LookM:
    """Look-M as a method for generate: `recent` and `important` fractions of the prompt's rows kept per layer."""

    recent: float = 0.05  # fraction of the prompt's rows kept as the most recent ones, [0, 1]
    important: float = 0.05  # fraction kept by received attention, text rows first, [0, 1]
    merge: str = "average"  # how evicted rows join kept ones: "average", "pivotal", "none"
    name = "look-m"
    layer = None  # Look-M has no pruning layer

    def resolved(self, n_layers: int) -> "LookM":
        for name in ("recent", "important"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is outside [0, 1]: a fraction of the prompt's rows")
        if self.recent + self.important == 0:
            raise ValueError("recent=0 and important=0 would keep no row at all")
        if self.merge not in MERGES:
            raise ValueError(f"merge={self.merge!r} must be one of {', '.join(map(repr, MERGES))}")
        return self

    @torch.no_grad()
    def prefill(self, model, embeds, caches, video, generator=None, decoder=None, positions=None, added=None):
        """generate's prefill for Look-M. Returns (last row's logits (V,), Pruning of layer 1's cache)."""
        pos = torch.arange(embeds.shape[1], device=embeds.device)  # (N,): the rows' order; `positions` turns them
        cos, sin = model.rope(pos if positions is None else positions)
        x, (S, rows, a_v) = look_m_prefill(model, embeds, cos, sin, pos, caches, video, self, added)
        return model.head(x[:, -1:])[0, -1], Pruning(layer=None, kept=S, rows=rows, scores=a_v)
