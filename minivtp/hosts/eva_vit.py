"""EVA ViT-g, the vision tower of BLIP-2 and InstructBLIP, and so of the Q-Former video LLMs (ST-LLM).

What one frame becomes, rows of the tower's output (ST-LLM: 224 x 224 pixels, 14 x 14 patches, P = 256):

    row 0          [CLS]            a learned vector + its position: attends to every patch, no pooling after
    rows 1 .. P    patch (r, c)     raster order, row r = (i - 1) // 16, column c = (i - 1) % 16

Then `norm`, one LayerNorm over every row (LAVIS calls it `ln_vision`, transformers `post_layernorm`), and the
Q-Former reads all 1 + P rows by cross-attention (qformer.py). The [CLS] row is there, but nothing downstream
ranks by it: what reaches the LLM is the Q-Former's query tokens, which is why PruMerge+ has nowhere to go.

Dimensions: T frames, P patches per frame, Cv the tower's width (1408 in ViT-g), H heads, D = Cv / H.

A block is a pre-norm ViT layer, as CLIP's, with two differences that matter when loading weights:
  - q, k and v are one matmul (`qkv`, (3 Cv, Cv)) with a bias on q and v only. A bias on k would add q.b to
    every score of a query row, the same for every key, which softmax removes: a checkpoint's k bias, where it
    has one (transformers keeps a (3 Cv,) bias with zeros in the middle), changes nothing, and I load it as is.
  - the activation is exact GELU (erf), not CLIP's quick GELU; LayerNorm eps 1e-6.

Sources: LAVIS / ST-LLM `stllm/models/eva_vit.py` (`Attention`, `Block`, `create_eva_vit_g`: depth 39, width
1408, 16 heads, mlp_ratio 4.3637, so 6144 hidden); transformers `InstructBlipVideoVisionModel`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class EvaConfig:
    dim: int = 1408  # Cv
    n_layers: int = 39  # ViT-g has 40; BLIP-2 drops the last one
    n_heads: int = 16
    hidden_dim: int = 6144  # int(1408 * 4.3637)
    image_size: int = 224
    patch_size: int = 14
    eps: float = 1e-6

    @property
    def grid(self) -> int:  # patches per side: 224 / 14 = 16
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, hf: dict) -> "EvaConfig":
        """From transformers' InstructBlip(Video)VisionConfig as config.json holds it."""
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"vision hidden_act {hf['hidden_act']!r}: the EVA tower uses exact 'gelu'")
        return cls(dim=hf.get("hidden_size", 1408), n_layers=hf.get("num_hidden_layers", 39),
                   n_heads=hf.get("num_attention_heads", 16), hidden_dim=hf.get("intermediate_size", 6144),
                   image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 14),
                   eps=hf.get("layer_norm_eps", 1e-6))


class EvaAttention(nn.Module):
    """Bidirectional multi-head attention, q k v from one matmul. Used by the tower and by ST-LLM's BT-Adapter."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, L, Cv) -> (B, L, Cv): B frames (or patches, for attention over time)
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_heads)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, L, L)
        a = torch.softmax(scores.float(), dim=-1).to(v.dtype)  # float32 softmax whatever the weights' dtype
        return self.proj(rearrange(a @ v, "b h l d -> b l (h d)"))


class EvaBlock(nn.Module):  # pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x))
    def __init__(self, cfg: EvaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = EvaAttention(cfg.dim, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.dim)

    def mlp(self, x):
        return self.fc2(F.gelu(self.fc1(x)))

    def forward(self, x):  # (T, 1+P, Cv) -> (T, 1+P, Cv)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViT(nn.Module):
    """pixels (T, 3, S, S) -> (T, 1+P, Cv): patch embedding, [CLS], positions, the blocks, then `norm`."""

    def __init__(self, cfg: EvaConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)  # with a bias, unlike CLIP's
        self.cls = nn.Parameter(torch.zeros(cfg.dim))
        self.pos = nn.Parameter(torch.zeros(cfg.grid**2 + 1, cfg.dim))  # (1+P, Cv), [CLS]'s first
        self.layers = nn.ModuleList(EvaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)  # ln_vision

    def embed(self, pixels):  # (T, 3, S, S) -> (T, 1+P, Cv), the input of block 1
        S = self.cfg.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, S, S):
            raise ValueError(f"pixels must be (T, 3, {S}, {S}) for this tower, got {tuple(pixels.shape)}")
        x = rearrange(self.patch(pixels.to(self.patch.weight.dtype)), "t c h w -> t (h w) c")  # (T, P, Cv)
        return torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos  # (T, 1+P, Cv)

    def forward(self, pixels):
        x = self.embed(pixels)
        for block in self.layers:
            x = block(x)
        return self.norm(x)  # (T, 1+P, Cv)
