"""Qwen2.5-VL's vision tower: video frames in pairs, cut into 2 x 14 x 14 patches, through a ViT whose blocks
attend inside windows (a few attend to the whole frame), merged 2 x 2 into the tokens the language model reads.

One temporal group (2 frames) of an H x W video, grid_h = H/14 by grid_w = W/14 patches, in the order the processor
writes them: merge block by merge block, the 4 patches of a block together (so the merger is a reshape):

    patch rows    b(0,0): p(0,0) p(0,1) p(1,0) p(1,1)     block (0,0) of the grid_h/2 x grid_w/2 merge blocks
                  b(0,1): p(0,2) p(0,3) p(1,2) p(1,3)
                  ...
    merged rows   m(0,0) m(0,1) ... m(grid_h/2-1, grid_w/2-1)      Nv = grid_h * grid_w / 4 tokens a group

Attention, block by block: `fullatt_block_indexes` attend over one whole temporal group; the others only inside
windows of window_size/28 x window_size/28 merge blocks (112 px: 4 x 4 blocks, 8 x 8 patches), the last window of
a row or column cut short. The rows are put in window order before the first block and back after the merger.

Dimensions: P patches (all groups), Cv vision width, D head dim, C language width, t/h/w the patch grid.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivtp.model import RMSNorm, rotate_half


@dataclass
class QwenViTConfig:
    dim: int = 1280  # Cv
    depth: int = 32
    n_heads: int = 16
    hidden_dim: int = 3420
    out_dim: int = 3584  # C: the language model's width
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    window_size: int = 112  # pixels a side
    fullatt_block_indexes: tuple = (7, 15, 23, 31)
    in_channels: int = 3
    rope_theta: float = 10000.0
    tokens_per_second: int = 2  # M-RoPE's t positions per second of video (the host's positions, not the tower's)

    @classmethod
    def from_hf(cls, hf: dict) -> "QwenViTConfig":
        if (act := hf.get("hidden_act", "silu")) != "silu":
            raise ValueError(f"vision hidden_act {act!r}: Qwen2.5-VL's tower uses 'silu'")
        rope = hf.get("rope_parameters") or {}
        return cls(dim=hf["hidden_size"], depth=hf["depth"], n_heads=hf["num_heads"],
                   hidden_dim=hf["intermediate_size"], out_dim=hf["out_hidden_size"],
                   patch_size=hf.get("patch_size", 14), temporal_patch_size=hf.get("temporal_patch_size", 2),
                   merge_size=hf.get("spatial_merge_size", 2), window_size=hf.get("window_size", 112),
                   fullatt_block_indexes=tuple(hf.get("fullatt_block_indexes", (7, 15, 23, 31))),
                   in_channels=hf.get("in_channels", 3), rope_theta=rope.get("rope_theta", 10000.0),
                   tokens_per_second=hf.get("tokens_per_second", 2))


def patchify(frames, cfg: QwenViTConfig):
    """Normalised frames (T, 3, H, W), T even -> patches (P, 3 * 2 * 14 * 14) in the processor's order, and the grid
    (t, h, w) in patches: t = T/2 temporal groups, each of h x w patches."""
    p, m, tp = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    T, C, H, W = frames.shape
    if T % tp or H % (p * m) or W % (p * m):
        raise ValueError(f"frames {tuple(frames.shape)}: the count must be a multiple of {tp} and the sides of "
                         f"{p * m} (the host's preprocess makes them so)")
    x = rearrange(frames, "(t tp) c (bh m1 p1) (bw m2 p2) -> (t bh bw m1 m2) (c tp p1 p2)", tp=tp, m1=m, m2=m, p1=p,
                  p2=p)
    return x, (T // tp, H // p, W // p)


def window_order(grid, cfg: QwenViTConfig):
    """The merge blocks of every group in window order, and each window's length in patches (Qwen2.5-VL's
    get_window_index): windows of w x w merge blocks, row-major over the frame, cut short at the edges."""
    t, h, w = grid
    bh, bw, win = h // cfg.merge_size, w // cfg.merge_size, cfg.window_size // cfg.merge_size // cfg.patch_size
    blocks = torch.arange(t * bh * bw).view(t, bh, bw)
    order, lengths = [], []
    for g in range(t):
        for i in range(0, bh, win):
            for j in range(0, bw, win):
                window = blocks[g, i : i + win, j : j + win].flatten()
                order.append(window)
                lengths.append(window.numel() * cfg.merge_size ** 2)
    return torch.cat(order), lengths


def vision_rope(grid, cfg: QwenViTConfig, device=None):
    """2D RoPE: each patch's (row, column) in its frame; the first half of the rotated pairs turn with the row,
    the second with the column. -> cos, sin (P, D), patches in the processor's order."""
    t, h, w = grid
    D = cfg.dim // cfg.n_heads
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D // 2, 2, device=device, dtype=torch.float32) / (D // 2)))
    m = cfg.merge_size
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    order = lambda a: rearrange(a, "(bh m1) (bw m2) -> (bh bw m1 m2)", m1=m, m2=m)  # noqa: E731  as patchify
    rows, cols = order(rows).repeat(t), order(cols).repeat(t)  # (P,)
    freqs = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)  # (P, D/2)
    freqs = torch.cat([freqs, freqs], dim=-1)  # (P, D)
    return freqs.cos(), freqs.sin()


class VisionBlock(nn.Module):  # pre-norm, RMSNorm, SwiGLU with biases, attention inside the given segments
    def __init__(self, cfg: QwenViTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm1, self.norm2 = RMSNorm(cfg.dim, 1e-6), RMSNorm(cfg.dim, 1e-6)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.w_gate, self.w_up = nn.Linear(cfg.dim, cfg.hidden_dim), nn.Linear(cfg.dim, cfg.hidden_dim)
        self.w_down = nn.Linear(cfg.hidden_dim, cfg.dim)

    def attention(self, x, cos, sin, lengths):  # (P, Cv) -> (P, Cv): each segment of `lengths` rows on its own
        q, k, v = rearrange(self.qkv(x), "n (three h d) -> three h n d", three=3, h=self.n_heads)
        q, k = ((a.float() * cos + rotate_half(a.float()) * sin).to(x.dtype) for a in (q, k))  # RoPE in float32
        out = [F.scaled_dot_product_attention(qs[None], ks[None], vs[None])[0]  # (H, n, D) no mask inside
               for qs, ks, vs in zip(*(a.split(lengths, dim=1) for a in (q, k, v)))]
        return self.proj(rearrange(torch.cat(out, dim=1), "h n d -> n (h d)"))

    def forward(self, x, cos, sin, lengths):
        x = x + self.attention(self.norm1(x), cos, sin, lengths)
        h = self.norm2(x)
        return x + self.w_down(F.silu(self.w_gate(h)) * self.w_up(h))


class Merger(nn.Module):  # RMSNorm, then each 2 x 2 block's 4 patches side by side, Linear, GELU, Linear
    def __init__(self, cfg: QwenViTConfig):
        super().__init__()
        width = cfg.dim * cfg.merge_size ** 2
        self.norm = RMSNorm(cfg.dim, 1e-6)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, cfg.out_dim)
        self.unit = cfg.merge_size ** 2

    def forward(self, x):  # (P, Cv) -> (P/4, C)
        x = self.norm(x).reshape(-1, self.unit * x.shape[-1])  # the 4 patches of a block are consecutive rows
        return self.fc2(F.gelu(self.fc1(x)))


class QwenViT(nn.Module):
    def __init__(self, cfg: QwenViTConfig):
        super().__init__()
        self.cfg = cfg
        # a Conv3d whose stride is its kernel and has no bias: one matrix product per patch
        self.patch_embed = nn.Parameter(torch.empty(cfg.dim, cfg.in_channels, cfg.temporal_patch_size, cfg.patch_size,
                                                    cfg.patch_size))
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = Merger(cfg)

    def forward(self, patches, grid):
        """patches (P, 3*2*14*14) in the processor's order, grid (t, h, w) -> merged tokens (t*h*w/4, C), frame
        by frame, each frame's blocks row-major."""
        t, h, w = grid
        unit = self.cfg.merge_size ** 2
        x = patches.to(self.patch_embed.dtype) @ self.patch_embed.flatten(1).T  # (P, Cv)
        cos, sin = vision_rope(grid, self.cfg, x.device)  # (P, D)
        blocks, windows = window_order(grid, self.cfg)
        # the rows in window order, merge block by merge block (the 4 patches of a block stay together)
        rows = (blocks[:, None] * unit + torch.arange(unit)).flatten().to(x.device)  # (P,)
        x, cos, sin = x[rows], cos[rows], sin[rows]  # cos, sin (P, D): one table for every head
        frames = [h * w] * t  # full attention: each temporal group on its own (rows are still grouped by frame)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, frames if i in self.cfg.fullatt_block_indexes else windows)
        merged = self.merger(x)  # (P/4, C), merge blocks in window order
        return merged[torch.argsort(blocks.to(x.device))]  # back to frame order
