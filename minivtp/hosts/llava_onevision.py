"""LLaVA-OneVision and LLaVA-Video: SigLIP frames, a two-layer projector, 2 x 2 pooling, newline embeddings, and a
Qwen2 decoder. One family, two checkpoint layouts, two ways to place the newline embedding.

LLaVA-OneVision, as transformers runs it (`video_token_index` once per row below; here ONE placeholder stands for
all of them). 32 frames at 384 px: 27 x 27 SigLIP patches, bilinearly resized to 14 x 14 = 196 a frame:

    prompt rows   <|im_start|>system ... <|im_start|>user\\n                        prefix: always kept
                  f0: p(0,0) p(0,1) ... p(13,13)                     196 rows    video, frame 0      (span)
                  f1: p(0,0) ...        p(13,13)                     196 rows    video, frame 1      (span)
                  ...
                  f31: ...                                           196 rows    video, frame 31     (span)
                  <newline>                                            1 row     image_newline: NOT a video token
                  \\n{question}<|im_end|>\\n<|im_start|>assistant\\n             question rows (scored, kept)

LLaVA-Video-7B-Qwen2 (LLaVA-NeXT's own layout, mm_newline_position "grid"): 64 frames, 27 x 27 average-pooled with
stride 2 to 13 x 13, and the newline embedding after every row of every frame, inside the frame:

    f0: p(0,0) ... p(0,12) <nl>   p(1,0) ... p(1,12) <nl>   ...   p(12,12) <nl>      13 * 14 = 182 rows
    f1: ...

There the newline rows sit between a frame's tokens, so they are part of the frame's Nv (as Tarsier's are):
LLM-VTP ranks them with the patches, and a frame keeps ceil(alpha * 182) rows.

A worked example of the pooled grid (`pooled_grid`): a g x g patch grid becomes ceil(g/2) x ceil(g/2) with
bilinear resizing (OneVision) and floor(g/2) x floor(g/2) with average pooling (LLaVA-Video's eval setting):

    >>> pooled_grid(27, "bilinear"), pooled_grid(27, "average"), pooled_grid(4, "bilinear")
    (14, 13, 2)

Dimensions: T frames, g patches per side, h = w pooled tokens per side, Nv tokens per frame, C language width.
Where each fact comes from (file and line of LLaVA-NeXT and of transformers): docs/checkpoints.md.
"""

import math
import re

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivtp import checkpoint
from minivtp.hf_config import config_from_hf
from minivtp.hosts import Host, Prompt, llava
from minivtp.hosts.llava import Projector
from minivtp.hosts.prompts import PLLAVA_TEMPLATES, qwen_prompt
from minivtp.hosts.siglip import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    SiglipConfig,
    SiglipTower,
    preprocess,
    siglip_to_ours,
)
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

POOL_MODES = ("bilinear", "average", "max")
NEWLINES = ("one_token", "grid", "frame", "no_token")
IMAGE_TOKEN_INDEX = -200  # LLaVA-NeXT's placeholder id (llava/constants.py): never a vocabulary id
SO400M = "google/siglip-so400m-patch14-384"  # the tower LLaVA-NeXT's configs name in mm_vision_tower


def pooled_grid(g: int, mode: str) -> int:
    """Tokens per side after LLaVA-NeXT's / transformers' 2x pooling of a g x g patch grid."""
    return math.ceil(g / 2) if mode == "bilinear" else g // 2  # interpolate to ceil; avg/max_pool2d floor


def sample_linspace(n_available: int, n: int):
    """LLaVA-NeXT's frame sampling (load_video with force_sample): np.linspace(0, n_available - 1, n) as ints,
    first and last frame included. (PLLaVA takes the middle of n equal segments: vision.sample_indices.)"""
    if n_available < 1:
        raise ValueError("the video has no frames")
    if n == 1:
        return [0]
    return [int((n_available - 1) * i / (n - 1)) for i in range(n)]  # int() truncates, as dtype=int does


class LlavaOnevision(Host):
    """SigLIP tower + projector + pooling + newline embedding + minivtp's Transformer (Qwen2)."""

    def __init__(self, text: Config, vision: SiglipConfig, feature_layer=-1, projector_act="gelu", video_token=151647,
                 placeholder="<video>", pool="bilinear", newline="one_token", frames=32, arrangement="llava-onevision",
                 mean=SIGLIP_MEAN, std=SIGLIP_STD):
        super().__init__()
        if pool not in POOL_MODES:
            raise ValueError(f"mm_spatial_pool_mode {pool!r} must be one of {', '.join(POOL_MODES)}")
        if newline not in NEWLINES:
            raise ValueError(f"mm_newline_position {newline!r} must be one of {', '.join(NEWLINES)}")
        self.vision = SiglipTower(vision)
        self.projector = Projector(vision.dim, text.dim, projector_act)
        self.image_newline = nn.Parameter(torch.zeros(text.dim))
        self.llm = Transformer(text)
        self.feature_layer, self.image_token, self.placeholder = feature_layer, video_token, placeholder
        self.pool, self.newline, self.frames, self.arrangement = pool, newline, frames, arrangement
        self.mean, self.std = tuple(mean), tuple(std)
        self.sample_indices = sample_linspace

    # ---- building from a config.json: the two layouts ----------------------------------------------------------

    @classmethod
    def from_transformers(cls, hf: dict, preprocessor: dict = None) -> "LlavaOnevision":
        """From a transformers `llava_onevision` config.json (llava-hf/llava-onevision-qwen2-7b-ov-hf's layout)."""
        layer = hf.get("vision_feature_layer", -1)
        if not isinstance(layer, int):
            raise ValueError(f"vision_feature_layer {layer!r}: one layer is supported, not a list of layers")
        if hf.get("vision_feature_select_strategy", "full") != "full":
            raise ValueError("vision_feature_select_strategy 'default' drops the first token as a class token; "
                             "SigLIP has none, LLaVA-OneVision writes 'full'")
        if not hf.get("multimodal_projector_bias", True):
            raise ValueError("multimodal_projector_bias false is not LLaVA-OneVision's projector")
        text = dict(hf.get("text_config") or {})
        text.setdefault("model_type", "qwen2")
        p = preprocessor or {}
        return cls(config_from_hf(text), SiglipConfig.from_hf(hf.get("vision_config") or {}), feature_layer=layer,
                   projector_act=hf.get("projector_hidden_act", "gelu"), video_token=hf.get("video_token_index", 151647),
                   frames=hf.get("num_frames") or 32, mean=p.get("image_mean", SIGLIP_MEAN),
                   std=p.get("image_std", SIGLIP_STD))

    @classmethod
    def from_llava_next(cls, hf: dict) -> "LlavaOnevision":
        """From LLaVA-NeXT's own `llava_qwen` config.json (lmms-lab/LLaVA-Video-7B-Qwen2, lmms-lab/llava-onevision-
        qwen2-7b-ov): a Qwen2 config plus mm_* keys. The tower's sizes are not in it: LLaVA-NeXT builds so400m from
        its name; a `vision_config` dict, if present, overrides them (minivtp's tests write tiny towers that way)."""
        tower = hf.get("mm_vision_tower", SO400M)
        if "vision_config" not in hf and "siglip-so400m-patch14-384" not in str(tower):
            raise ValueError(f"mm_vision_tower {tower!r}: minivtp knows the sizes of {SO400M} only; add a "
                             "vision_config to config.json with the tower's sizes")
        if hf.get("add_faster_video"):
            raise ValueError("add_faster_video is true: LLaVA-Video's slow-fast token layout is not supported")
        projector = hf.get("mm_projector_type", "mlp2x_gelu")
        if projector != "mlp2x_gelu":
            raise ValueError(f"mm_projector_type {projector!r}: the hosts use 'mlp2x_gelu' (linear, GELU, linear)")
        if "unpad" not in hf.get("mm_patch_merge_type", "spatial_unpad"):
            raise ValueError("mm_patch_merge_type without 'unpad': LLaVA-NeXT then has no image_newline")
        text = {k: v for k, v in hf.items() if not k.startswith("mm_") and k != "vision_config"}
        text["model_type"] = "qwen2"
        newline = hf.get("mm_newline_position", "one_token")
        return cls(config_from_hf(text), SiglipConfig.from_hf(hf.get("vision_config") or {}), feature_layer=-1,
                   video_token=IMAGE_TOKEN_INDEX, placeholder="<image>", pool=hf.get("mm_spatial_pool_mode", "bilinear"),
                   newline=newline, frames=hf.get("num_frames") or hf.get("frames_upbound") or 64,
                   arrangement="llava-video" if newline == "grid" else "llava-onevision")

    # ---- pixels to video rows ---------------------------------------------------------------------------------

    def preprocess(self, frames):  # frames (H, W, 3) uint8 each -> (T, 3, S, S)
        return preprocess(frames, self.vision.cfg.image_size, self.mean, self.std)

    def pooled(self):  # h = w: pooled tokens per side
        return pooled_grid(self.vision.cfg.grid, self.pool)

    def tokens_per_frame(self) -> int:  # Nv: what LLM-VTP ranks in each frame
        h = self.pooled()
        return {"grid": h * (h + 1), "frame": h * h + 1}.get(self.newline, h * h)

    def pool_frames(self, x):
        """Projected features (T, g*g, C) -> (T, h, w, C): the 2 x 2 pooling of get_2dPool / apply_pooling."""
        g = self.vision.cfg.grid
        x = rearrange(x, "t (h w) c -> t c h w", h=g)  # (T, C, g, g)
        if self.pool == "bilinear":  # transformers and LLaVA-NeXT: F.interpolate, align_corners False
            x = F.interpolate(x, size=(math.ceil(g / 2), math.ceil(g / 2)), mode="bilinear")
        elif self.pool == "average":
            x = F.avg_pool2d(x, 2)
        else:
            x = F.max_pool2d(x, 2)
        return rearrange(x, "t c h w -> t h w c")  # (T, h, w, C)

    def video_tokens(self, pixels):
        """pixels (T, 3, S, S) -> (video rows (T * Nv, C), the rows after them (0 or 1 newline, C))."""
        feats = self.vision(pixels, self.feature_layer)  # (T, g*g, Cv): "full", every patch (no class token)
        x = self.pool_frames(self.projector(feats))  # (T, h, w, C)
        T, h, w, C = x.shape
        nl = self.image_newline.to(x.dtype)
        after = x.new_zeros(0, C)
        if self.newline == "grid":  # add_token_per_grid: a newline after each row of each frame
            x = torch.cat([x, nl.expand(T, h, 1, C)], dim=2)  # (T, h, w+1, C)
        x = rearrange(x, "t h w c -> t (h w) c")  # (T, Nv or h*w, C)
        if self.newline == "frame":  # add_token_per_frame: one after each frame
            x = torch.cat([x, nl.expand(T, 1, C)], dim=1)  # (T, h*w+1, C)
        elif self.newline == "one_token":  # one after the whole video, outside every frame
            after = nl[None]  # (1, C)
        return rearrange(x, "t n c -> (t n) c"), after

    def prompt_text(self, question: str, template: str = None) -> str:
        """LLaVA-NeXT's qwen_1_5 conversation, then a benchmark template's answer prompt ("Best option:(")."""
        return qwen_prompt(question, self.placeholder) + ((PLLAVA_TEMPLATES[template][6] or "") if template else "")

    def prompt(self, ids: torch.Tensor, pixels) -> Prompt:
        """Token ids (N0,) with ONE video placeholder -> Prompt(embeds (1, N, C), VideoSpan of the T frames,
        positions (N,))."""
        video, after = self.video_tokens(pixels)  # (T*Nv, C), (0 or 1, C)
        # Eq. 1: the frames where the placeholder was; OneVision's newline row and the question after them are the
        # question rows LLM-VTP scores with (the newline is kept, never ranked)
        embeds, start = self.splice(ids, video, after)
        T = pixels.shape[0]
        span = VideoSpan(start, T, video.shape[0] // T)
        span.check(embeds.shape[1], video_rows=video.shape[0])
        return Prompt(embeds, span, torch.arange(embeds.shape[1], device=embeds.device))

    def cells(self, Nv: int):
        h = self.pooled()
        if self.newline == "frame":  # a newline after every frame: no grid holds it
            return None
        if self.newline == "grid":  # a newline ends every row of the grid
            return [(j // (h + 1), j % (h + 1)) if j % (h + 1) != h else None for j in range(Nv)], (h, h)
        return [(j // h, j % h) for j in range(Nv)], (h, h)

    def class_attention(self, pixels):
        raise ValueError("PruMerge+ ranks patches by their attention to CLIP's class token; SigLIP has no class "
                         "token, so PruMerge+ does not apply to LLaVA-OneVision / LLaVA-Video")


# --------------------------------------------------------------------------------------------------------------
# Loading: the two layouts' tensor names -> ours


def transformers_to_ours(name: str):
    """transformers' LlavaOnevisionForConditionalGeneration names (any version's layout) -> ours."""
    name = re.sub(r"^model\.(?=vision_tower|multi_modal_projector|language_model|image_newline)", "", name)
    if name == "image_newline":
        return "image_newline"
    if name.startswith("vision_tower."):
        ours = siglip_to_ours(re.sub(r"^vision_tower\.(vision_model\.)?", "", name))
        return ours and "vision." + ours  # "" stays "", None stays None
    if name.startswith("multi_modal_projector."):
        return "projector." + name[len("multi_modal_projector."):]
    return llava.llava_to_ours(name)  # language_model.* and lm_head.*, every transformers layout


def llava_next_to_ours(name: str):
    """LLaVA-NeXT's names (LlavaQwenForCausalLM: the Qwen2 decoder at the top, the rest under model.) -> ours."""
    m = re.match(r"model\.vision_tower\.vision_tower\.vision_model\.(.*)", name)
    if m:
        ours = siglip_to_ours(m.group(1))
        return ours and "vision." + ours
    m = re.match(r"model\.mm_projector\.([02])\.(weight|bias)$", name)  # nn.Sequential(Linear, GELU, Linear)
    if m:
        return f"projector.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    if name == "model.image_newline":
        return "image_newline"
    if checkpoint.DERIVED.fullmatch(name):
        return ""
    ours = checkpoint.hf_to_ours(name)
    return None if ours is None else "llm." + ours


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> LlavaOnevision:
    """A ready host from its checkpoint directory (weights.load_video_llm calls this)."""
    path, hf, files, index = checkpoint.open_checkpoint(path)
    checkpoint.no_lora(path, hf, lora_alpha)
    original = hf.get("model_type") == "llava_qwen"
    pre = checkpoint.preprocessor_config(path)
    with torch.device("meta"):
        try:
            if original:
                model = LlavaOnevision.from_llava_next(hf)
            else:
                model = LlavaOnevision.from_transformers(hf, pre)
        except ValueError as e:
            raise checkpoint.CheckpointError(f"{path / 'config.json'}: {e}") from None
    rename = llava_next_to_ours if original else transformers_to_ours
    info = checkpoint.load_into(model, files, rename, dtype, device, index, progress)
    if model.llm.cfg.tie_embeddings:
        model.llm.output.weight = model.llm.embed.weight
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()
