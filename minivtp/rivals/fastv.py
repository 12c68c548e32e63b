"""FastV (Chen et al. 2024): at layer K, the LAST prompt row's attention ranks the video as one image; the top
tokens over the whole video go on to layers K+1..L, and layers 1..K keep every row in their caches.

  - Score: the attention of the last prompt row at layer K, averaged over heads (their mean over dim 1, row -1).
  - Count: theirs keeps round(n * (1 - R)) image tokens; ours keeps ceil(alpha * T * Nv) (`n_keep`), so that
    alpha means what it means for LLM-VTP and the two keep the same number of tokens.
  - Video: all T * Nv video tokens are ranked as one image, across frames (FastV has no notion of frames).
  - Positions: kept rows keep theirs (their position_ids = keep_indexs). Layers 1..K keep every row in their
    KV cache: FastV prunes the hidden states only, so `Generation.cache_lens` is N for layers 1..K.
"""

from dataclasses import dataclass

import torch

from minivtp import vtp
from minivtp.generate import Pruning
from minivtp.vtp import VideoSpan


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


@dataclass(frozen=True)
class FastV:
    """FastV as a method for generate: `alpha` of the whole video kept, chosen at layer K = `layer`."""

    alpha: float = 1.0  # fraction of the video's T*Nv tokens kept, (0, 1]
    layer: int = 2  # K, counted from 1
    name = "fastv"

    def resolved(self, n_layers: int) -> "FastV":
        vtp.check_alpha(self.alpha)
        if not (isinstance(self.layer, int) and 1 <= self.layer <= n_layers):
            raise ValueError(f"layer={self.layer!r} is outside 1..{n_layers} (K counts decoder layers from 1)")
        return self

    @torch.no_grad()
    def prefill(self, model, embeds, caches, video, generator=None, decoder=None, positions=None, added=None):
        """generate's prefill for FastV: layers 1..K on every row, then only the prefix, the kept video tokens
        and the question rows through K+1..L. Returns (last row's logits (V,), Pruning). `positions`, `added`: as
        generate.prefill's (M-RoPE's 3D positions, DeepStack's features)."""
        N, K = embeds.shape[1], self.layer
        pos = torch.arange(N, device=embeds.device)  # (N,): the rows' order; `positions` turns them
        cos, sin = model.rope(pos if positions is None else positions)
        x_in = model.forward_layers(embeds, cos, sin, pos, caches, stop=K - 1, added=added)  # layers 1..K-1
        x = model.forward_layers(x_in, cos, sin, pos, caches, start=K - 1, stop=K, added=added)  # layer K
        a_v = last_row_scores(model.layers[K - 1], x_in, cos, sin, pos, caches[K - 1], video)  # (T*Nv,)
        S = fastv_select(a_v, video, self.alpha)
        rows = vtp.rows_to_keep(N, video, S)
        x, pos, cos, sin = vtp.drop_rows(x, pos, cos, sin, [], rows)  # the hidden states only: caches 1..K stay whole
        if added:  # DeepStack's features still to come go with their rows
            added = {i: a[rows] for i, a in added.items() if i >= K}
            x = model.forward_layers(x, cos, sin, pos, caches, K, added=added)
        else:
            rest = model.forward_layers if decoder is None else decoder.rest
            x = rest(x, cos, sin, pos, caches, K)  # layers K+1..L on the kept rows
        return model.head(x[:, -1:])[0, -1], Pruning(layer=K, kept=S, rows=rows, scores=a_v)
