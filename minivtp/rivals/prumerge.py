"""PruMerge+ (Shang et al. 2024): in the vision tower, before the LLM sees anything, each frame keeps the patches
its [CLS] token attends to most (outliers by the interquartile range, plus uniform samples) and merges the rest in.
It asks the host for what it reads through the host contract (minivtp/hosts/__init__.py): `class_attention(pixels)`
and `splice`; the LLM then runs unpruned on the shorter prompt (generate with video=None).

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
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minivtp.hosts import Prompt


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


@dataclass(frozen=True)
class PruMergePlus:
    """PruMerge+ as a method: it prunes while the prompt is built, so generate sees no video to prune."""

    name = "prumerge+"

    def prompt(self, vm, ids, pixels, **extra) -> Prompt:
        """The host's prompt with every frame pruned and merged: Prompt(embeds, MergedVideo, positions)."""
        x, keys, a, finish = vm.class_attention(pixels)  # per frame; a host without a [CLS] token says so
        frames = [finish(prumerge_plus(x[t], keys[t], a[t])[0], t) for t in range(x.shape[0])]
        embeds, start = vm.splice(ids, torch.cat(frames))  # Eq. 1, with the pruned frames
        video = MergedVideo(start, tuple(f.shape[0] for f in frames), x.shape[0] * vm.tokens_per_frame())
        return Prompt(embeds, video, torch.arange(embeds.shape[1], device=embeds.device))
