"""Qwen3-VL's vision tower: flat patches in, one merged token per 2 x 2 patches out, plus DeepStack's features.
(Sizes below are transformers' defaults for the tower; a checkpoint's vision_config says its own.)

    a video, T' frames (H, W), resized so H and W are multiples of 32 (minivtp/hosts/qwen3_vl.py)
        --2 frames x 16 x 16 pixels a patch-->   (t*h*w, 3*2*16*16)   t = T'/2 temporal groups, h = H/16, w = W/16
        --Conv3d = one linear map a patch-->     (t*h*w, Cv)
        --+ learned positions, a 48 x 48 table resampled bilinearly to h x w (corners aligned)
        --27 pre-norm blocks, 2D RoPE, each temporal group attending to itself only
              after blocks 8, 16, 24: a DeepStack merger  -->  (t*h*w/4, C) each; the decoder adds the k-th
                                                                to the output of its layer k (0, 1, 2), at the
                                                                video rows
        --the merger: LayerNorm, 4 neighbours concatenated, MLP-->  (t*h*w/4, C)   the video tokens

The order of the rows is the whole trick. The processor does not send patches row by row: within each temporal
group it sends them 2 x 2 block by 2 x 2 block, so the four patches a merged token is made of are four
consecutive rows. A 4 x 6 patch grid (2 x 3 merged tokens), by the merged token each patch ends up in:

    patch grid (row, col)          rows of the input, in order
    a a b b c c                    a(0,0) a(0,1) a(1,0) a(1,1)  b(0,2) b(0,3) b(1,2) b(1,3)  c(0,4) ...
    a a b b c c                    d(2,0) d(2,1) d(3,0) d(3,1)  e(2,2) ...                 f(3,4) f(3,5)
    d d e e f f
    d d e e f f                    merged tokens a b c d e f: the 2 x 3 grid row by row

so a temporal group's Nv = h*w/4 merged tokens are its merged grid row by row, and group g's tokens are rows
g*Nv .. (g+1)*Nv - 1 of the output. Everything position-like here (the learned table, RoPE's (row, col)) is laid
out in that same block order; transformers' get_vision_position_ids and its interpolation helper do likewise.

A worked example of that order, on the 4 x 6 grid above:

    >>> patch_rows_cols(4, 6, merge=2)[:8].tolist()
    [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]

and of the learned table's resampling (corners aligned: the first and last patch sit exactly on the table's
first and last entry; a 2-entry table over 3 patches puts the middle one half way):

    >>> axis_taps(3, side=2)
    (tensor([0, 0, 1]), tensor([1, 1, 1]), tensor([0.0000, 0.5000, 0.0000]))

Dimensions: t temporal groups, h x w patches per group, Cv the tower's width, C the decoder's width (the merger's
output), D the head width, Nv = h*w/4 merged tokens per group.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivtp.hosts.llava import ACTIVATIONS


@dataclass
class Qwen3VisionConfig:  # the defaults are transformers' Qwen3VLVisionConfig's
    dim: int = 1152  # Cv
    n_layers: int = 27
    n_heads: int = 16
    hidden_dim: int = 4304
    out_dim: int = 3584  # C: the merger writes the decoder's width (out_hidden_size)
    patch_size: int = 16
    temporal_patch_size: int = 2  # frames per temporal group
    merge_size: int = 2  # merge_size x merge_size patches make one video token
    n_pos: int = 2304  # the learned position table, a 48 x 48 grid, whatever the frame size
    deepstack_layers: tuple = (8, 16, 24)  # blocks (0-based) whose output a DeepStack merger reads
    rope_theta: float = 10000.0
    act: str = "gelu_pytorch_tanh"
    in_channels: int = 3
    eps: float = 1e-6  # every LayerNorm of the tower and the mergers; transformers hard-codes it

    def __post_init__(self):
        self.deepstack_layers = tuple(self.deepstack_layers)
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 4:
            raise ValueError(f"vision hidden_size {self.dim} / num_heads {self.n_heads} must be a whole head "
                             "width divisible by 4 (2D RoPE gives a quarter of it to each of row and column, twice)")
        if math.isqrt(self.n_pos) ** 2 != self.n_pos:
            raise ValueError(f"vision num_position_embeddings {self.n_pos} must be a square (a side x side table)")
        for i in self.deepstack_layers:
            if not 0 <= i < self.n_layers:
                raise ValueError(f"vision deepstack_visual_indexes has {i}, outside 0..{self.n_layers - 1} "
                                 f"for a {self.n_layers}-block tower")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"vision hidden_act {self.act!r} is not supported (known: {', '.join(ACTIVATIONS)})")

    @property
    def head_dim(self) -> int:  # D
        return self.dim // self.n_heads

    @property
    def side(self) -> int:  # the learned table is side x side
        return math.isqrt(self.n_pos)

    @property
    def patch_dim(self) -> int:  # one input row: 3 channels x 2 frames x 16 x 16 pixels
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, hf: dict) -> "Qwen3VisionConfig":
        """From a `qwen3_vl_vision` config (config.json's vision_config). Missing keys: transformers' defaults.

        The released checkpoints write no rope_parameters for the tower; transformers then takes theta 10000."""
        d = cls()
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type {rope['rope_type']!r}: Qwen3-VL's tower has axial 2D RoPE only")
        for key in ("patch_size", "temporal_patch_size"):
            if not isinstance(hf.get(key, 1), int):
                raise ValueError(f"vision {key}={hf[key]!r}: minivtp reads one integer (square patches)")
        return cls(dim=hf.get("hidden_size", d.dim), n_layers=hf.get("depth", d.n_layers),
                   n_heads=hf.get("num_heads", d.n_heads), hidden_dim=hf.get("intermediate_size", d.hidden_dim),
                   out_dim=hf.get("out_hidden_size", d.out_dim), patch_size=hf.get("patch_size", d.patch_size),
                   temporal_patch_size=hf.get("temporal_patch_size", d.temporal_patch_size),
                   merge_size=hf.get("spatial_merge_size", d.merge_size),
                   n_pos=hf.get("num_position_embeddings", d.n_pos),
                   deepstack_layers=tuple(hf.get("deepstack_visual_indexes", d.deepstack_layers)),
                   rope_theta=rope.get("rope_theta", d.rope_theta), act=hf.get("hidden_act", d.act),
                   in_channels=hf.get("in_channels", d.in_channels))


# ----------------------------------------------------------------------------------------------------------------
# Where each patch sits: (row, col) in block order, the learned table resampled, 2D RoPE


def patch_rows_cols(h: int, w: int, merge: int) -> torch.Tensor:
    """(h*w, 2): the (row, col) of each patch of one temporal group, in the order the processor sends them."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w) each
    rc = torch.stack([rows, cols], dim=-1)  # (h, w, 2)
    return rearrange(rc, "(bh mh) (bw mw) two -> (bh bw mh mw) two", mh=merge, mw=merge)


def axis_taps(n: int, side: int):
    """Bilinear taps along one axis: n patches read a side-long table with its corners aligned on theirs.

    (lo, hi, frac): patch i reads (1 - frac) of entry lo and frac of entry hi. transformers' closed form
    i * (side - 1) / (n - 1), which is torch.linspace(0, side - 1, n) as the original fast_pos_embed_interpolate
    wrote it (equal to ~1 ulp)."""
    src = torch.arange(n, dtype=torch.float32) * (side - 1) / max(n - 1, 1)
    lo = src.floor().long()
    return lo, (lo + 1).clamp(max=side - 1), src - lo


def interpolate_positions(table: torch.Tensor, h: int, w: int, merge: int) -> torch.Tensor:
    """table (side*side, Cv), the learned positions -> (h*w, Cv), one per patch, in block order.

    Bilinear with aligned corners, i.e. F.interpolate(mode="bilinear", align_corners=True) of the table seen
    as a side x side image: four entries a patch, weighted by how near they are."""
    side = math.isqrt(table.shape[0])
    grid = table.view(side, side, -1)  # (side, side, Cv)
    h_lo, h_hi, fh = (x.to(table.device) for x in axis_taps(h, side))
    w_lo, w_hi, fw = (x.to(table.device) for x in axis_taps(w, side))
    fh, fw = fh[:, None, None], fw[None, :, None]  # broadcast over (h, w, Cv)
    pos = ((1 - fh) * (1 - fw) * grid[h_lo][:, w_lo] + (1 - fh) * fw * grid[h_lo][:, w_hi]
           + fh * (1 - fw) * grid[h_hi][:, w_lo] + fh * fw * grid[h_hi][:, w_hi])  # (h, w, Cv)
    return rearrange(pos, "(bh mh) (bw mw) c -> (bh bw mh mw) c", mh=merge, mw=merge)  # (h*w, Cv)


def rope_2d(rows_cols: torch.Tensor, head_dim: int, theta: float):
    """(N, 2) patch rows and columns -> cos, sin (N, D) for rotate-half RoPE.

    D/4 frequencies; a patch's angles are [row * f, col * f] (D/2), written twice (D) so that rotate_half pairs
    dimension j with j + D/2: the first quarter and the third rotate by the row, the second and fourth by the
    column."""
    # subtle: the frequencies are those of a head of width D/2 (exponent k / (D/2), k = 0, 2, ...), not D
    half = head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half)  # (D/4,)
    angles = rows_cols.float()[:, :, None] * inv_freq  # (N, 2, D/4)
    angles = rearrange(angles, "n two f -> n (two f)")  # (N, D/2): rows' angles, then columns'
    angles = torch.cat([angles, angles], dim=-1)  # (N, D)
    return angles.cos(), angles.sin()


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# The blocks and the mergers


class Qwen3VisionBlock(nn.Module):  # pre-norm ViT layer with a fused qkv and RoPE; no mask inside a group
    def __init__(self, cfg: Qwen3VisionConfig):
        super().__init__()
        self.n_heads, self.act = cfg.n_heads, ACTIVATIONS[cfg.act]
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.wo = nn.Linear(cfg.dim, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.dim)

    def forward(self, x, cos, sin):  # x (t, h*w, Cv); cos, sin (h*w, D), the same for every group
        q, k, v = rearrange(self.qkv(self.norm1(x)), "t n (three h d) -> three t h n d", three=3, h=self.n_heads)
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(v.dtype)  # RoPE in float32, as transformers
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(v.dtype)
        # each temporal group is a batch entry: a patch sees the patches of its own 2 frames, never another
        # group's (transformers' cu_seqlens, one segment per group)
        a = F.scaled_dot_product_attention(q, k, v)  # (t, H, h*w, D)
        x = x + self.wo(rearrange(a, "t h n d -> t n (h d)"))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class Merger(nn.Module):
    """merge_size**2 neighbouring patches (consecutive rows, see the top of the file) -> one token of width C.

    The final merger normalises each patch, then concatenates; DeepStack's mergers concatenate, then normalise
    the concatenation (transformers' use_postshuffle_norm). Both then fc1, exact GELU, fc2."""

    def __init__(self, cfg: Qwen3VisionConfig, norm_after_concat: bool):
        super().__init__()
        self.width = cfg.dim * cfg.merge_size**2
        self.norm_after_concat = norm_after_concat
        self.norm = nn.LayerNorm(self.width if norm_after_concat else cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(self.width, self.width)
        self.fc2 = nn.Linear(self.width, cfg.out_dim)

    def forward(self, x):  # (N, Cv) -> (N/4, C)
        if self.norm_after_concat:
            x = self.norm(x.reshape(-1, self.width))  # (N/4, 4 Cv)
        else:
            x = self.norm(x).reshape(-1, self.width)  # (N/4, 4 Cv)
        return self.fc2(F.gelu(self.fc1(x)))


class Qwen3VisionTower(nn.Module):
    def __init__(self, cfg: Qwen3VisionConfig):
        super().__init__()
        self.cfg = cfg
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.patch = nn.Conv3d(cfg.in_channels, cfg.dim, kernel_size=k, stride=k)  # one patch in, one vector out
        self.pos = nn.Embedding(cfg.n_pos, cfg.dim)
        self.layers = nn.ModuleList(Qwen3VisionBlock(cfg) for _ in range(cfg.n_layers))
        self.merger = Merger(cfg, norm_after_concat=False)
        self.deepstack = nn.ModuleList(Merger(cfg, norm_after_concat=True) for _ in cfg.deepstack_layers)

    def check(self, patches: torch.Tensor, grid):
        """One clear line for patches that are not what the processor makes for `grid` = (t, h, w)."""
        cfg = self.cfg
        grid = [int(g) for g in grid]  # a tuple, a list or a row of transformers' video_grid_thw
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be (t, h, w), three positive integers, got {tuple(grid)}")
        t, h, w = grid
        if h % cfg.merge_size or w % cfg.merge_size:
            raise ValueError(f"grid (t, h, w) = {(t, h, w)}: h and w must be multiples of the merge size "
                             f"{cfg.merge_size}")
        if patches.dim() != 2 or tuple(patches.shape) != (t * h * w, cfg.patch_dim):
            raise ValueError(f"patches must be (t*h*w, {cfg.patch_dim}) = ({t * h * w}, {cfg.patch_dim}) for grid "
                             f"{(t, h, w)}, got {tuple(patches.shape)}")
        return t, h, w

    def forward(self, patches: torch.Tensor, grid):
        """patches (t*h*w, 3*2*16*16) in the processor's order, grid (t, h, w) ->
        tokens (t*h*w/4, C), and a list of (t*h*w/4, C), one per DeepStack layer, in config order."""
        cfg = self.cfg
        t, h, w = self.check(patches, grid)
        x = patches.to(self.patch.weight.dtype).view(-1, cfg.in_channels, cfg.temporal_patch_size,
                                                     cfg.patch_size, cfg.patch_size)  # (t*h*w, 3, 2, 16, 16)
        x = self.patch(x).view(t, h * w, cfg.dim)  # (t, h*w, Cv)
        x = x + interpolate_positions(self.pos.weight, h, w, cfg.merge_size).to(x.dtype)  # same for every group
        cos, sin = rope_2d(patch_rows_cols(h, w, cfg.merge_size), cfg.head_dim, cfg.rope_theta)  # (h*w, D)
        cos, sin = cos.to(x.device), sin.to(x.device)
        deepstack = []
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin)  # (t, h*w, Cv)
            if i in cfg.deepstack_layers:
                deepstack.append(self.deepstack[cfg.deepstack_layers.index(i)](x.reshape(t * h * w, cfg.dim)))
        return self.merger(x.reshape(t * h * w, cfg.dim)), deepstack  # (t*h*w/4, C), [(t*h*w/4, C)]


# Hugging Face's names (after `model.visual.`) -> ours.
QWEN3_VISION_TO_OURS = [
    (r"patch_embed\.proj\.", "patch."),
    (r"pos_embed\.", "pos."),
    (r"blocks\.(\d+)\.norm1\.", r"layers.\1.norm1."),
    (r"blocks\.(\d+)\.norm2\.", r"layers.\1.norm2."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"layers.\1.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"layers.\1.wo."),
    (r"blocks\.(\d+)\.mlp\.linear_fc1\.", r"layers.\1.fc1."),
    (r"blocks\.(\d+)\.mlp\.linear_fc2\.", r"layers.\1.fc2."),
    (r"merger\.norm\.", "merger.norm."),
    (r"merger\.linear_fc1\.", "merger.fc1."),
    (r"merger\.linear_fc2\.", "merger.fc2."),
    (r"deepstack_merger_list\.(\d+)\.norm\.", r"deepstack.\1.norm."),
    (r"deepstack_merger_list\.(\d+)\.linear_fc1\.", r"deepstack.\1.fc1."),
    (r"deepstack_merger_list\.(\d+)\.linear_fc2\.", r"deepstack.\1.fc2."),
]
