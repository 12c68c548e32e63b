"""Qwen2.5-VL: frames in pairs through its own ViT (minivtp/hosts/qwen_vit.py), merged 2 x 2, spliced into a Qwen2
decoder whose RoPE is M-RoPE: a video token's position is its (t, h, w), not its row.

The prompt as the chat template writes it, ONE <|video_pad|> expanded as the processor expands it (t temporal
groups of Nv = grid_h * grid_w / 4 merged tokens; here t = 3, a 2 x 3 block grid, so Nv = 6):

    prompt rows   <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<|vision_start|>
                                                             prefix: always kept; positions 0..s-1 on all three axes
                  g0: m(0,0) m(0,1) m(0,2) m(1,0) m(1,1) m(1,2)     frame 0 (span)  (t, h, w) = (s, s+i, s+j)
                  g1: m(0,0) ...                   m(1,2)           frame 1 (span)  (s + 1*dt, s+i, s+j)
                  g2: m(0,0) ...                   m(1,2)           frame 2 (span)  (s + 2*dt, s+i, s+j)
                  <|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n     question rows: from s + 2*dt + 1
                                                                      (the video's largest position + 1)

dt = tokens_per_second * seconds per group (2 frames / the sampled fps): 2 * 1 = 2 for Qwen2.5-VL-7B at 2 fps.
The first generated token sits at (largest prompt position) + 1 on all three axes, transformers' `rope_deltas`.

subtle: where the text after the video starts is not the same everywhere. Qwen's own get_rope_index (the Qwen2.5-VL
repository, vLLM, transformers 4.x) starts it at the video's largest position + 1, t included; the transformers the
tests run against (5.x) starts it at s + max(blocks a side), below the last groups' t when the video is long. The
model was trained with the first; `text_after = "max"` (the default) follows it, `"grid"` follows transformers 5.x
(the parity tests use it; the two agree while (t - 1) * dt < max(blocks a side)).

What LLM-VTP ranks: each temporal group is a frame (T = t, Nv = blocks a group); the span is one contiguous run.

## Pruning and 3D positions

The released LLM-VTP code (Visual-AI/PruneVid) runs on PLLaVA's LLaMA, where a token's position is its row: its
pruning selects rows and the position_ids follow them (kept row 57 stays at 57). It could not have said what to do
with positions that are not rows, because it never had them: whether a kept video token keeps its (t, h, w),
whether the question after a pruned video should move up to close the gap, where decoding continues.

Every implementation for these hosts we read answers the same way, and so does minivtp: kept video tokens keep
their original 3D positions, text positions are left alone, decoding continues from the unpruned prompt's
largest position + 1.
- FlashVID (Qwen2.5-VL): position_ids[:, :, keep], the kept columns of the 3D position tensor.
- FastVID and VidCom2 (Qwen2.5-VL): the kept tokens' rows of position_ids, the rest unchanged.
- vLLM's EVS (Qwen2.5-VL, Qwen3-VL; recompute_mrope_positions): the kept video tokens' original (t, h, w), the text
  after the video continuing as it would have, and the decode delta from the unpruned layout.
In minivtp the rows' RoPE tables (cos, sin) are made once from the (3, N) positions and pruning selects rows of
them (vtp.drop_rows), so this is what happens without a line of code for it; generate decodes from
positions.max() + 1, pruned or not.

PruMerge+ does not apply: it ranks patches by their attention to a class token, and this ViT has none.
"""

import math
import re

import torch
import torch.nn.functional as F
from einops import rearrange

from minivtp import checkpoint
from minivtp.hf_config import config_from_hf
from minivtp.hosts import Host, Prompt
from minivtp.hosts.qwen_vit import QwenViT, QwenViTConfig, patchify
from minivtp.model import Transformer
from minivtp.hosts.prompts import PLLAVA_TEMPLATES, qwen_vl_prompt
from minivtp.hosts.llava import CLIP_MEAN, CLIP_STD
from minivtp.vtp import VideoSpan

# the video processor's defaults (transformers' Qwen2VLVideoProcessor): pixels a frame, after resizing
MIN_PIXELS, MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28
chat_prompt = qwen_vl_prompt  # the chat template's text for a video and a question (minivtp/hosts/prompts.py)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    """Qwen2-VL's resize rule: both sides multiples of `factor`, the area within [min_pixels, max_pixels], the aspect
    ratio kept as nearly as that allows. -> (height, width)"""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"a frame of {height} x {width}: the aspect ratio must be at most 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def sample_indices(n_available: int, n: int, group: int = 2):
    """The video processor's sampling (sample_frames with num_frames): n rounded to a multiple of the temporal group,
    then frames 0, k, 2k, ... with k = n_available / n, truncated."""
    n = round(n / group) * group
    if n_available < 1:
        raise ValueError("the video has no frames")
    if n > n_available:
        raise ValueError(f"the video has {n_available} frames, fewer than the {n} Qwen2.5-VL samples")
    return torch.arange(0, n_available, n_available / n).int().tolist()


class Qwen25VL(Host):
    arrangement = "qwen2.5-vl"
    placeholder = "<|video_pad|>"

    def __init__(self, text, vision: QwenViTConfig, video_token=151656, frames=32, fps=2.0, mean=CLIP_MEAN,
                 std=CLIP_STD, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
        super().__init__()
        self.vision = QwenViT(vision)
        self.llm = Transformer(text)
        self.image_token, self.frames, self.fps = video_token, frames, fps
        self.mean, self.std, self.min_pixels, self.max_pixels = tuple(mean), tuple(std), min_pixels, max_pixels
        self.text_after = "max"  # where the text after the video starts: see the module's docstring

    @classmethod
    def from_hf(cls, hf: dict, preprocessor: dict = None) -> "Qwen25VL":
        """From a transformers `qwen2_5_vl` config.json: v5's text_config, or the text fields at the top level as
        Qwen/Qwen2.5-VL-7B-Instruct's config.json has them."""
        text = dict(hf.get("text_config") or {k: v for k, v in hf.items() if k != "vision_config"})
        text["model_type"] = "qwen2_5_vl_text"
        text.setdefault("tie_word_embeddings", hf.get("tie_word_embeddings", False))
        p = preprocessor or {}
        size = p.get("size") or {}
        return cls(config_from_hf(text), QwenViTConfig.from_hf(hf.get("vision_config") or {}),
                   video_token=hf.get("video_token_id", text.get("video_token_id", 151656)),
                   frames=hf.get("num_frames") or 32, mean=p.get("image_mean", CLIP_MEAN),
                   std=p.get("image_std", CLIP_STD),
                   min_pixels=p.get("min_pixels") or size.get("shortest_edge") or MIN_PIXELS,
                   max_pixels=p.get("max_pixels") or size.get("longest_edge") or MAX_PIXELS)

    def describe_lines(self) -> list:  # for `python weights.py DIR`
        v = self.vision.cfg
        return [f"vision       Qwen2.5-VL ViT, {v.depth} blocks (whole frames in {list(v.fullatt_block_indexes)}, "
                f"{v.window_size}px windows in the rest), width {v.dim}, {v.temporal_patch_size} x {v.patch_size} x "
                f"{v.patch_size} patches, {v.merge_size} x {v.merge_size} merger",
                f"video        qwen2.5-vl: {self.frames} frames in groups of {v.temporal_patch_size}, (H/28) x (W/28) "
                f"tokens a group, M-RoPE {list(self.llm.cfg.mrope_section)}"]

    def sample_indices(self, n_available: int, n: int):
        return sample_indices(n_available, n, self.vision.cfg.temporal_patch_size)

    def preprocess(self, frames):
        """Frames (H, W, 3) uint8, all one size -> (T, 3, H', W') float32: resized by smart_resize (bicubic,
        antialiased, rounded to uint8 as the processor's resize of uint8 frames is), scaled to 0..1, normalised; the
        last frame repeated when T is odd (the processor's padding to whole temporal groups)."""
        frames = torch.stack(list(frames)) if not isinstance(frames, torch.Tensor) else frames
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {tuple(frames.shape)} {frames.dtype}")
        cfg = self.vision.cfg
        factor = cfg.patch_size * cfg.merge_size
        h, w = smart_resize(*frames.shape[1:3], factor, self.min_pixels, self.max_pixels)
        x = rearrange(frames, "t h w c -> t c h w").float()
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
        if pad := -x.shape[0] % cfg.temporal_patch_size:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (x / 255 - mean) / std

    def video_tokens(self, pixels):
        """pixels (T, 3, H, W) -> merged tokens (t * Nv, C) and the grid (t, h, w) in patches."""
        patches, grid = patchify(pixels, self.vision.cfg)
        return self.vision(patches, grid), grid

    def positions(self, n_before: int, grid, n_after: int):
        """get_rope_index for [text; video; text]: (3, N). Text rows count up on all three axes; a video token's t is
        the group times tokens_per_second * seconds a group, its h and w its merge block's row and column, all from
        where the text stopped; the text after goes on from the video's largest position + 1 (text_after "max") or
        from where the text stopped + max(blocks a side) (text_after "grid", transformers 5.x)."""
        cfg = self.vision.cfg
        t, h, w = grid[0], grid[1] // cfg.merge_size, grid[2] // cfg.merge_size
        dt = cfg.tokens_per_second * cfg.temporal_patch_size / self.fps  # positions per temporal group
        before = torch.arange(n_before).expand(3, -1)
        tt, hh, ww = torch.meshgrid((torch.arange(t) * dt).long(), torch.arange(h), torch.arange(w), indexing="ij")
        video = torch.stack([tt, hh, ww]).reshape(3, -1) + n_before
        if self.text_after not in ("max", "grid"):
            raise ValueError(f"text_after={self.text_after!r} must be 'max' (Qwen's get_rope_index) or 'grid' "
                             "(transformers 5.x)")
        first = int(video.max()) + 1 if self.text_after == "max" else n_before + max(h, w)
        after = torch.arange(n_after).expand(3, -1) + first
        return torch.cat([before, video, after], dim=1)

    def prompt_text(self, question: str, template: str = None) -> str:
        """The chat template's text for a video and a question, then a benchmark template's answer prompt."""
        return chat_prompt(question) + ((PLLAVA_TEMPLATES[template][6] or "") if template else "")

    def prompt(self, ids: torch.Tensor, pixels) -> Prompt:
        """Token ids (N0,) with ONE <|video_pad|> -> Prompt(embeds (1, N, C), the VideoSpan, positions (3, N))."""
        video, grid = self.video_tokens(pixels)  # (t * Nv, C)
        embeds, i = self.splice(ids, video)  # Eq. 1: the groups' tokens where the placeholder was
        span = VideoSpan(i, grid[0], video.shape[0] // grid[0])
        span.check(embeds.shape[1], video_rows=video.shape[0])
        positions = self.positions(i, grid, ids.numel() - i - 1).to(ids.device)
        return Prompt(embeds, span, positions)

    def class_attention(self, pixels):
        raise ValueError("PruMerge+ ranks patches by their attention to a class token; Qwen2.5-VL's ViT has "
                         "none, so PruMerge+ does not apply to Qwen2.5-VL")


# --------------------------------------------------------------------------------------------------------------
# Loading: transformers' names (v5's model.visual / model.language_model, and the older visual / model) -> ours

VISION_RULES = [
    (r"patch_embed\.proj\.weight", "patch_embed"),
    (r"blocks\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"blocks\.(\d+)\.attn\.qkv\.", r"blocks.\1.qkv."),
    (r"blocks\.(\d+)\.attn\.proj\.", r"blocks.\1.proj."),
    (r"blocks\.(\d+)\.mlp\.gate_proj\.", r"blocks.\1.w_gate."),
    (r"blocks\.(\d+)\.mlp\.up_proj\.", r"blocks.\1.w_up."),
    (r"blocks\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.w_down."),
    (r"merger\.ln_q\.", "merger.norm."),
    (r"merger\.mlp\.0\.", "merger.fc1."),
    (r"merger\.mlp\.2\.", "merger.fc2."),
]


def transformers_to_ours(name: str):
    m = re.match(r"(?:model\.)?visual\.(.*)", name)
    if m:
        ours = checkpoint.apply_rules(m.group(1), VISION_RULES)
        return ours and "vision." + ours
    name = re.sub(r"^model\.language_model\.", "model.", name)  # v5: model.language_model.layers -> model.layers
    if checkpoint.DERIVED.fullmatch(name):
        return ""
    ours = checkpoint.hf_to_ours(name)
    return None if ours is None else "llm." + ours


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> Qwen25VL:
    """A ready host from its checkpoint directory (weights.load_video_llm calls this)."""
    path, hf, files, index = checkpoint.open_checkpoint(path)
    checkpoint.no_lora(path, hf, lora_alpha)
    pre = checkpoint.preprocessor_config(path)
    with torch.device("meta"):
        try:
            model = Qwen25VL.from_hf(hf, pre)
        except (ValueError, KeyError, TypeError) as e:
            raise checkpoint.CheckpointError(f"{path / 'config.json'}: {e}") from None
    tied = model.llm.cfg.tie_embeddings
    rename = lambda n: "" if tied and n == "lm_head.weight" else transformers_to_ours(n)  # noqa: E731
    info = checkpoint.load_into(model, files, rename, dtype, device, index, progress)
    if tied:
        model.llm.output.weight = model.llm.embed.weight
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()
