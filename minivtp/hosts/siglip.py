"""SigLIP's vision tower, as LLaVA-OneVision and LLaVA-Video use it: pixels in, one layer's patch features out.

    frame (3, 384, 384), normalised with mean 0.5 and std 0.5
        --14 x 14 patches, conv with bias-->  27 x 27 = 729 patches   (384 = 27 * 14 + 6: the last 6 pixel rows
                                                                       and columns are never seen)
        --+ a learned position per patch-->   (729, 1152)             no class token, no pre-norm
        --26 pre-norm ViT blocks-->           hidden state of the feature layer, (729, 1152)

The tokens of one frame, row by row of the patch grid (what the host pools and projects):

    row 0        p(0,0)  p(0,1)  ...  p(0,26)
    row 1        p(1,0)  p(1,1)  ...  p(1,26)
    ...
    row 26       p(26,0)          ...  p(26,26)

How it differs from CLIP (minivtp/hosts/llava.py), each a place where reusing the CLIP tower would be silently wrong:
no class token (so "drop CLS" must not happen, and PruMerge+'s class attention has nothing to read), no
pre-norm, a patch conv with a bias, LayerNorm eps 1e-6, tanh-approximated GELU, and the image resized to a
square with no centre crop. The blocks themselves are CLIP's (vision.VisionBlock) with that activation.

A worked example of the grid arithmetic, on a tiny tower (30 px, 7 px patches: 4 x 4 patches, 2 pixels lost):

    >>> tower = SiglipTower(SiglipConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=16, image_size=30, patch_size=7))
    >>> tower.cfg.grid, tuple(tower(torch.zeros(2, 3, 30, 30), layer=-1).shape)
    (4, (2, 16, 8))

Dimensions: T frames, P = grid * grid patches per frame, Cv the tower's width.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivtp.checkpoint import apply_rules
from minivtp.hosts.llava import ACTIVATIONS, VISION_TO_OURS, VisionBlock

SIGLIP_MEAN = (0.5, 0.5, 0.5)  # LLaVA-NeXT's SigLipImageProcessor, and transformers' SiglipImageProcessor
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass
class SiglipConfig:
    dim: int = 1152  # Cv; so400m-patch14-384, the tower both hosts use
    n_layers: int = 26  # the released tower has 27; LLaVA-NeXT deletes the last (siglip_encoder.py, docs)
    n_heads: int = 16
    hidden_dim: int = 4304
    image_size: int = 384
    patch_size: int = 14
    eps: float = 1e-6
    act: str = "gelu_pytorch_tanh"

    @property
    def grid(self) -> int:  # patches per side: 384 // 14 = 27 (the conv drops what does not fill a patch)
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, hf: dict) -> "SiglipConfig":
        """From a `siglip_vision_model` config (transformers' vision_config). Missing keys: so400m's sizes."""
        act = hf.get("hidden_act", "gelu_pytorch_tanh")
        if act not in ACTIVATIONS:
            raise ValueError(f"vision hidden_act {act!r} is not supported (known: {', '.join(ACTIVATIONS)})")
        if hf.get("vision_use_head", False):
            raise ValueError("vision_config.vision_use_head is true: the hosts read patch features, not SigLIP's "
                             "pooling head (LLaVA-OneVision writes vision_use_head false)")
        d = cls()
        return cls(dim=hf.get("hidden_size", d.dim), n_layers=hf.get("num_hidden_layers", d.n_layers),
                   n_heads=hf.get("num_attention_heads", d.n_heads), hidden_dim=hf.get("intermediate_size", d.hidden_dim),
                   image_size=hf.get("image_size", d.image_size), patch_size=hf.get("patch_size", d.patch_size),
                   eps=hf.get("layer_norm_eps", d.eps), act=act)


class SiglipTower(nn.Module):
    """SigLIP's vision transformer up to one layer's hidden states (post_norm is loaded, and not used by the hosts:
    transformers' hidden_states, which they read, come before it)."""

    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)  # with bias, unlike CLIP's
        self.pos = nn.Embedding(cfg.grid**2, cfg.dim)  # one per patch: no class token
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.n_layers))
        self.post_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, pixels, layer: int = -1):
        """pixels (T, 3, S, S), SigLIP-normalised -> hidden states of `layer`, (T, P, Cv).

        Numbered as transformers' `hidden_states`: 0 the embeddings, i the output of block i, -1 the last block
        (LLaVA-OneVision's vision_feature_layer, and LLaVA-NeXT's hidden_states[-1])."""
        n = self.cfg.n_layers
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"vision feature layer {layer} is outside -{n + 1}..{n} for a {n}-block tower")
        S = self.cfg.image_size
        if tuple(pixels.shape[1:]) != (3, S, S):
            raise ValueError(f"pixels must be (T, 3, {S}, {S}) for this tower, got {tuple(pixels.shape)}")
        x = rearrange(self.patch(pixels.to(self.patch.weight.dtype)), "t c h w -> t (h w) c")  # (T, P, Cv)
        x = x + self.pos.weight  # (T, P, Cv)
        for block in self.layers[: layer % (n + 1)]:
            x = block(x)
        return x


# Hugging Face's names (under vision_model.) -> ours, in both layouts: transformers' model.vision_tower.* and
# LLaVA-NeXT's model.vision_tower.vision_tower.* strip to the same rest.
SIGLIP_TO_OURS = [(p, r) for p, r in VISION_TO_OURS if r not in ("cls", "pre_norm.")]  # CLIP's, less these two


def siglip_to_ours(rest: str):
    """A SigLIP tensor name after `vision_model.` -> our SiglipTower name; "" for derived buffers; None if unknown."""
    if rest == "embeddings.position_ids":
        return ""  # arange(P), a buffer some checkpoints store
    return apply_rules(rest, SIGLIP_TO_OURS)


def preprocess(frames, size: int, mean=SIGLIP_MEAN, std=SIGLIP_STD):
    """frames, each (H, W, 3) uint8 (a list, or a (T, H, W, 3) tensor) -> (T, 3, size, size) float32.

    SigLIP's processor: each frame resized to size x size (bicubic, antialiased; the aspect ratio is not kept and
    nothing is cropped), scaled to 0..1, then (x - mean) / std, 0.5 and 0.5 for SigLIP: pixels land in -1..1."""
    if isinstance(frames, torch.Tensor) and (frames.dim() != 4 or frames.shape[-1] != 3):
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(frames.shape)}")
    out = []
    for f in frames:
        if f.dim() != 3 or f.shape[-1] != 3 or f.dtype != torch.uint8:
            raise ValueError(f"a frame must be (H, W, 3) uint8, got {tuple(f.shape)} {f.dtype}")
        x = rearrange(f, "h w c -> 1 c h w").float() / 255
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        out.append((x[0] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    return torch.stack(out)  # (T, 3, size, size)
