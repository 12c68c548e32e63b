"""UMT-L, VideoChat2's video encoder: a ViT-L/16 that attends over all T frames' patches at once.

What a clip becomes, rows of the tower's output (VideoChat2: T = 16 frames of 224 x 224, 14 x 14 patches):

    rows t*P .. t*P + P-1    frame t's patches, raster order (P = 196), for t = 0 .. T-1
                             no [CLS] row at all; every row attends to all T*P rows (joint space-time attention)

Then one LayerNorm over every row (VideoChat2's `vision_layernorm`, eps 1e-12), and the Q-Former reads all T*P
rows as ONE image (videochat2.py): the frames are not kept apart after this tower.

Positions are fixed, not learned: a 1D sin-cos table over the flat index of 4 frames x P patches (the frame
count UMT was trained with), stretched along time to T frames by linear interpolation:

    table4[i, 2j]   = sin(i / 10000^(2j/C)),  table4[i, 2j+1] = cos(i / 10000^(2j/C)),  i = t*P + p, t < 4
    table[t, p]     = interpolate(table4[:, p] over t = 0..3, to T points, "linear", align_corners=False)

Dimensions: T frames, P patches per frame, Cv the width (1024), H heads.

A block is EVA's (eva_vit.py: qkv with q and v biases, exact GELU, LayerNorm eps 1e-6, no layer scale:
init_values 0). VideoChat2 reads the output of block 23 of 24 (`return_index=-2`: the tower is built with
24 + (-2) + 1 = 23 blocks) with no norm inside (`with_ln` is not in its config, so False).

Sources (OpenGVLab/Ask-Anything, video_chat2/): models/blip2/vit.py:57-131 (Attention, Block), :134-159
(PatchEmbed, a Conv3d of tubelet x 16 x 16), :163-194 (get_sinusoid_encoding_table), :244-324 (the encoder),
:399-405 (output viewed (B, T, L, C)); models/blip2/blip2.py init_vision_encoder_umt (vision_layernorm);
scripts/videochat_vicuna/config_7b_stage3.py:45-62 (sizes).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivtp.hosts.eva_vit import EvaBlock, EvaConfig


@dataclass
class UMTConfig:
    dim: int = 1024  # Cv
    n_layers: int = 23  # 24 - 2 + 1: VideoChat2 reads block 23's output
    n_heads: int = 16
    hidden_dim: int = 4096
    image_size: int = 224
    patch_size: int = 16
    tubelet: int = 1  # frames per patch in time
    trained_frames: int = 4  # the position table is built for this many frames, then stretched
    eps: float = 1e-6
    out_eps: float = 1e-12  # vision_layernorm's

    @property
    def grid(self) -> int:  # 224 / 16 = 14
        return self.image_size // self.patch_size

    def blocks(self) -> EvaConfig:
        return EvaConfig(dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads, hidden_dim=self.hidden_dim,
                         image_size=self.image_size, patch_size=self.patch_size, eps=self.eps)


def sincos_table(n: int, C: int) -> torch.Tensor:
    """(n, C) float64: row i is sin / cos of i / 10000^(2j/C) in channels 2j / 2j+1."""
    i = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(C, dtype=torch.float64)[None]
    angle = i / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / C)  # (n, C)
    return torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))


def positions(T: int, P: int, C: int, trained_frames: int = 4) -> torch.Tensor:
    """The fixed position of every row, (T*P, C) float32, as VideoChat2 builds it for T frames."""
    table = sincos_table(trained_frames * P, C).float()  # (4P, C): theirs is float32 from numpy float64
    if T == trained_frames:
        return table
    # subtle: stretched over time per patch and channel, so frame t of T sits between two trained frames
    per_patch = rearrange(table, "(t p) c -> (p c) 1 t", t=trained_frames)[:, 0][:, None]  # (P*C, 1, 4)
    stretched = F.interpolate(per_patch, size=T, mode="linear", align_corners=False)  # (P*C, 1, T)
    return rearrange(stretched[:, 0], "(p c) t -> (t p) c", p=P)


class UMT(nn.Module):
    """pixels (T, 3, S, S) -> (T*P, Cv): patches of every frame, positions, the blocks, then `norm`."""

    def __init__(self, cfg: UMTConfig):
        super().__init__()
        self.cfg = cfg
        k = (cfg.tubelet, cfg.patch_size, cfg.patch_size)
        self.patch = nn.Conv3d(3, cfg.dim, k, stride=k)
        self.layers = nn.ModuleList(EvaBlock(cfg.blocks()) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.out_eps)  # vision_layernorm

    def forward(self, pixels):
        S = self.cfg.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, S, S) or pixels.shape[0] % self.cfg.tubelet:
            raise ValueError(f"pixels must be (T, 3, {S}, {S}) with T a multiple of {self.cfg.tubelet}, "
                             f"got {tuple(pixels.shape)}")
        video = rearrange(pixels.to(self.patch.weight.dtype), "t c h w -> 1 c t h w")
        x = rearrange(self.patch(video), "1 c t h w -> (t h w) c")  # (T*P, Cv), frame by frame
        T = pixels.shape[0] // self.cfg.tubelet
        trained = self.cfg.trained_frames if T > 1 else 1  # one image: the table of one frame (img_pos_embed)
        x = x + positions(T, self.cfg.grid**2, self.cfg.dim, trained).to(x)
        x = x[None]  # (1, T*P, Cv): the whole clip is one sequence
        for block in self.layers:
            x = block(x)
        return self.norm(x[0])  # (T*P, Cv)
