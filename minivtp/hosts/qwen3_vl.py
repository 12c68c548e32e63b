"""Qwen3-VL as a host, the parts before the decoder: the video's pixels, its prompt, and where its frames sit.

A question about a clip of 25 fps, 4 s, 256 x 384 pixels: the processor reads 2 frames a second (8 frames), keeps
2 frames a temporal group and 32 x 32 pixels a video token, so t = 4 groups ("frames" for LLM-VTP) of
Nv = 8 x 12 = 96 tokens. The prompt the chat template writes, then the rows the processor expands it to:

    template   <|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is it?<|im_end|>\n
               <|im_start|>assistant\n

    rows       <|im_start|> user \n                                       text      (a rows)
               <0.3 seconds>                                               text      the timestamp, a few tokens
               <|vision_start|>                                            text
               <|video_pad|> x 96: group 0, its 8 x 12 tokens row by row    frame 0
               <|vision_end|>                                              text
               <1.4 seconds> <|vision_start|>                              text
               <|video_pad|> x 96: group 1                                 frame 1
               <|vision_end|> ... group 2 ... group 3 ...
               <|vision_end|> What is it? <|im_end|> \n <|im_start|> assistant \n   question rows

so the video is not one run of rows: frame g's Nv rows start after its own timestamp and <|vision_start|>
(`video_rows`). The template's one <|vision_start|><|video_pad|><|vision_end|> is not kept around the whole
video: the processor collapses it to the per-group wrappers above (`expand_video`).

Positions (M-RoPE, `mrope_positions`) are 3 numbers a row, (t, h, w). A text row has (p, p, p), one more than the
row before; a group's tokens have (p, p + i, p + j) for merged row i and column j, p being one more than the
text before it; after the group, the next text row is p + max(grid_h, grid_w) / 2. With timestamps between
groups, every group starts its own t from the text before it (transformers splits the video into t grids of
one group each), so a group's t is not its index: it is where its wrapper ends.

    >>> ids = [7, 1, 1, 1, 1, 7, 7, 1, 1, 1, 1, 7]     # 1 = video token; 2 groups of a 2 x 2 merged grid
    >>> pos, delta = mrope_positions(torch.tensor(ids), video_token_id=1, grid=(2, 4, 4), merge=2)
    >>> pos.tolist()
    [[0, 1, 1, 1, 1, 3, 4, 5, 5, 5, 5, 7], [0, 1, 1, 2, 2, 3, 4, 5, 5, 6, 6, 7], [0, 1, 2, 1, 2, 3, 4, 5, 6, 5, 6, 7]]
    >>> video_rows(torch.tensor(ids), video_token_id=1, grid=(2, 4, 4), merge=2).tolist()
    [[1, 2, 3, 4], [7, 8, 9, 10]]

(delta, transformers' rope_deltas, is the largest position + 1 - N = 8 - 12 = -4: a token decoded at row n
has position n + delta on all three axes.)

What pruning has to carry here, that the paper's hosts (one run of video rows, positions = rows) never asked:

  - rows are not positions. A kept token keeps its (t, h, w) from `mrope_positions`; the rows after it keep
    theirs, which do not shrink when rows before them go. transformers' compute_3d_position_ids gives a decoded
    token the cache's length + rope_deltas: after pruning the cache is shorter, so the dropped count has to be
    added back (decode from position N + delta whatever the cache holds).
  - frames are separated by text. The timestamps and each group's <|vision_start|> / <|vision_end|> are text
    rows between the frames: always kept, never ranked, and not question rows. The question rows, which score
    the video, are those after the last group's tokens (`PromptLayout.question_start` on).
  - DeepStack. The tower's k-th DeepStack feature (t*Nv rows, group by group as `rows` is) is added to the output
    of decoder layer k (0-based) at the video rows, in row order. Those added after the pruning step (when it
    comes before layer 2, with three of them) must lose the dropped tokens' rows too.

Preprocessing equals transformers' Qwen3VLVideoProcessor without torchvision (`preprocess`): frames sampled
at `fps` (2 a second) with at least 4 and at most 768, resized to multiples of 32 (`smart_resize`, which
budgets the pixels of the whole clip), scaled and normalised with mean 0.5 and std 0.5, padded to whole
groups by repeating the last frame, and cut into the tower's flat patches (minivtp/hosts/qwen3_vit.py).

Dimensions: T' sampled frames, t = T'/2 temporal groups (LLM-VTP's T), h x w patches a group, Nv = h*w/4
merged tokens a group, N prompt rows.
"""

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from minivtp.checkpoint import (HF_TO_OURS, CheckpointError, apply_rules, build_on_meta, load_into, no_lora,
                                open_checkpoint)
from minivtp.hf_config import config_from_hf
from minivtp.hosts import Host, Prompt
from minivtp.hosts.prompts import PLLAVA_TEMPLATES
from minivtp.hosts.qwen3_vit import QWEN3_VISION_TO_OURS, Qwen3VisionConfig, Qwen3VisionTower
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

VIDEO_PAD, VISION_START, VISION_END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
VIDEO_WRAPPER = VISION_START + VIDEO_PAD + VISION_END  # what the chat template writes for a video


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing: transformers' Qwen3VLVideoProcessor, step by step


@dataclass
class VideoProcessing:
    """The settings of video_preprocessor_config.json; the defaults are Qwen3VLVideoProcessor's own."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 128 * 32 * 32  # size.shortest_edge: pixels of the whole clip (frames x H x W), at least
    max_pixels: int = 768 * 32 * 32  # size.longest_edge: ... at most
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    fps: float = 2.0  # frames sampled a second of video
    num_frames: int = None  # a fixed number of frames instead (exclusive with fps)
    min_frames: int = 4
    max_frames: int = 768
    cap_pixels_per_frame: bool = False  # qwen-vl-utils' per-frame cap (transformers: off unless asked)
    max_video_tokens: int = 768  # the cap, in tokens a frame
    source: str = "Qwen3VLVideoProcessor's defaults"

    @property
    def factor(self) -> int:  # frame sides are multiples of this: one merged token is 32 x 32 pixels
        return self.patch_size * self.merge_size

    @classmethod
    def from_dir(cls, path) -> "VideoProcessing":
        """From a checkpoint directory's video_preprocessor_config.json; transformers' defaults if it has none
        (`source` says which)."""
        f = Path(path) / "video_preprocessor_config.json"
        if not f.is_file():
            return cls()
        try:
            d = json.loads(f.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{f}: not valid JSON ({e})") from None
        for flag in ("do_resize", "do_rescale", "do_normalize", "do_sample_frames"):
            if d.get(flag) is False:
                raise ValueError(f"{f}: {flag} is false; minivtp does what the released processors do (true)")
        if d.get("resample", 3) != 3:
            raise ValueError(f"{f}: resample {d['resample']!r}; minivtp resizes as the released processors do, "
                             "bicubic (3)")
        size = d.get("size", {})
        if size and not (size.get("shortest_edge") and size.get("longest_edge")):
            raise ValueError(f"{f}: size must have shortest_edge and longest_edge, got {size}")
        c = cls()
        return cls(patch_size=d.get("patch_size", c.patch_size),
                   temporal_patch_size=d.get("temporal_patch_size", c.temporal_patch_size),
                   merge_size=d.get("merge_size", c.merge_size),
                   min_pixels=size.get("shortest_edge", c.min_pixels),
                   max_pixels=size.get("longest_edge", c.max_pixels),
                   mean=tuple(d.get("image_mean", c.mean)), std=tuple(d.get("image_std", c.std)),
                   rescale_factor=d.get("rescale_factor", c.rescale_factor), fps=d.get("fps", c.fps),
                   num_frames=d.get("num_frames"), min_frames=d.get("min_frames", c.min_frames),
                   max_frames=d.get("max_frames", c.max_frames),
                   cap_pixels_per_frame=bool(d.get("cap_pixels_per_frame") or False),
                   max_video_tokens=d.get("max_video_tokens", c.max_video_tokens), source=str(f))


def sample_indices(total: int, video_fps: float, p: VideoProcessing, fps=None, num_frames=None) -> list:
    """Which of a video's `total` frames the processor reads: `fps` a second (default p.fps), at least
    p.min_frames and at most p.max_frames and `total`; or exactly `num_frames`, evenly spread.

    >>> sample_indices(100, 25.0, VideoProcessing())      # 4 s at 2 a second: 8 frames
    [0, 14, 28, 42, 57, 71, 85, 99]
    """
    if fps is not None and num_frames is not None:
        raise ValueError("give fps or num_frames, not both (the processor refuses both too)")
    if not isinstance(total, int) or total < 1:
        raise ValueError(f"a video of {total!r} frames: need at least 1")
    num_frames = num_frames if num_frames is not None else p.num_frames
    if num_frames is None:
        if not video_fps or video_fps <= 0:
            raise ValueError(f"video fps {video_fps!r}: sampling {fps or p.fps} frames a second needs the "
                             "video's own frame rate (transformers assumes 24 when it has none)")
        n = int(total / video_fps * (fps if fps is not None else p.fps))
        num_frames = min(max(n, p.min_frames), p.max_frames, total)
    elif num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: need at least 1")
    # np.linspace(0, total - 1, n).round(): i * step in float64, the last one exactly total - 1, then rounding
    # half to even (torch.round does too), so 0.5 -> 0 and 1.5 -> 2
    if num_frames == 1:
        return [0]
    step = (total - 1) / (num_frames - 1)
    at = torch.arange(num_frames, dtype=torch.float64) * step
    at[-1] = total - 1
    return at.round().long().tolist()


def smart_resize(num_frames: int, height: int, width: int, p: VideoProcessing, max_pixels: int = None):
    """(H, W) the frames are resized to: each side the nearest multiple of 32, then scaled down (or up) as a
    whole until frames x H x W lies in [min_pixels, max_pixels], keeping the aspect ratio as well as multiples
    of 32 allow. transformers' smart_resize of video_processing_qwen3_vl, with factor = patch * merge = 32.

    >>> smart_resize(8, 480, 640, VideoProcessing())   # 8 x 480 x 640 = 2.5 M pixels: 1.77x over, per side
    (256, 352)
    """
    factor, tf = p.factor, p.temporal_patch_size
    max_pixels = p.max_pixels if max_pixels is None else max_pixels
    if num_frames < tf:
        raise ValueError(f"{num_frames} frame(s): Qwen3-VL's processor needs at least {tf} (one temporal group)")
    if height < factor or width < factor:  # too small: scale up until the shorter side is one factor
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frames of {height} x {width}: the aspect ratio must be under 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / tf) * tf
    # subtle: the budget is the clip's (frames x H x W), so the more frames, the smaller each one
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < p.min_pixels:
        beta = math.sqrt(p.min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T', 3, H, W) uint8 -> (T', 3, height, width) uint8, bicubic and antialiased, as torchvision's resize
    does it for transformers (without torchvision).

    # subtle: on the CPU torchvision hands uint8 to torch's own uint8 bicubic kernel, which rounds between its
    # horizontal and vertical passes; elsewhere it resizes in float32, clamps and rounds. The two differ by
    # many levels on sharp edges, so I take the same path it takes on the same device (both checked equal to
    # torchvision 0.26's resize, bit for bit, on a CPU and on a CUDA GPU)."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    if frames.device.type == "cpu":
        return F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    x = F.interpolate(frames.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp_(0, 255).round_().to(torch.uint8)


def normalize(frames: torch.Tensor, p: VideoProcessing) -> torch.Tensor:
    """uint8 -> float32 (x - mean/r) / (std/r), r = 1/255: rescaling folded into the normalisation, as
    transformers fuses them (the same float32 operations, so the same bits)."""
    mean = torch.tensor(p.mean, device=frames.device) * (1.0 / p.rescale_factor)  # float32
    std = torch.tensor(p.std, device=frames.device) * (1.0 / p.rescale_factor)
    return (frames.float() - mean[:, None, None]) / std[:, None, None]


def patchify(frames: torch.Tensor, p: VideoProcessing):
    """(T', 3, H, W) -> (t*h*w, 3*2*16*16) in the tower's order, and grid (t, h, w).

    A clip with an odd number of frames gets its last frame once more, to fill the last group."""
    if pad := -frames.shape[0] % p.temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    T, _, H, W = frames.shape
    t, h, w = T // p.temporal_patch_size, H // p.patch_size, W // p.patch_size
    patches = rearrange(frames, "(t tp) c (bh mh ph) (bw mw pw) -> (t bh bw mh mw) (c tp ph pw)",
                        tp=p.temporal_patch_size, mh=p.merge_size, mw=p.merge_size, ph=p.patch_size,
                        pw=p.patch_size)
    return patches, (t, h, w)


def group_timestamps(indices: list, video_fps: float, temporal_patch_size: int = 2) -> list:
    """Seconds of each temporal group: the mean of its first and last frame's time (the last group padded
    with the last frame, as patchify pads it). Written "<{:.1f} seconds>" in the prompt.

    >>> group_timestamps([0, 7, 15, 22, 29], 10.0)      # groups (0, 7), (15, 22), (29, 29)
    [0.35, 1.85, 2.9]
    """
    indices = list(indices) + [indices[-1]] * (-len(indices) % temporal_patch_size)
    seconds = [i / video_fps for i in indices]
    return [(seconds[g] + seconds[g + temporal_patch_size - 1]) / 2
            for g in range(0, len(seconds), temporal_patch_size)]


@dataclass
class Video:
    patches: torch.Tensor  # (t*h*w, 3*2*16*16) float32: qwen3_vit.Qwen3VisionTower's input
    grid: tuple  # (t, h, w) in patches
    timestamps: list  # seconds, one per temporal group
    indices: list = field(default_factory=list)  # which frames of the video were read

    def to(self, device) -> "Video":  # what the host's prompt reads, on the model's device
        return Video(self.patches.to(device), self.grid, self.timestamps, self.indices)


def preprocess(frames: torch.Tensor, video_fps: float, p: VideoProcessing = None, fps=None, num_frames=None,
               indices=None) -> Video:
    """frames (T, H, W, 3) uint8, the whole video at `video_fps` -> Video, as Qwen3VLVideoProcessor makes it.

    Pass `indices` when `frames` are already the sampled ones (a reader that decoded only those: see
    sample_indices); they set the timestamps."""
    p = p or VideoProcessing()
    is_tensor = isinstance(frames, torch.Tensor)
    if not is_tensor or frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        got = f"{tuple(frames.shape)} {frames.dtype}" if is_tensor else type(frames).__name__
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 tensor, got {got}")
    if indices is None:
        indices = sample_indices(frames.shape[0], video_fps, p, fps=fps, num_frames=num_frames)
        frames = frames[indices]
    elif len(indices) != frames.shape[0]:
        raise ValueError(f"{len(indices)} indices for {frames.shape[0]} frames: one index per frame given")
    if not video_fps or video_fps <= 0:
        raise ValueError(f"video fps {video_fps!r}: the timestamps need the video's frame rate")
    x = rearrange(frames, "t h w c -> t c h w")  # (T', 3, H, W) uint8
    T, _, H, W = x.shape
    max_pixels = p.max_pixels
    if p.cap_pixels_per_frame:  # qwen-vl-utils: a frame costs at most max_video_tokens, or its share
        per_frame = max(min(p.max_video_tokens * p.factor**2, p.max_pixels // T), int(p.min_pixels * 1.05))
        max_pixels = per_frame * T
    h, w = smart_resize(T, H, W, p, max_pixels=max_pixels)
    patches, grid = patchify(normalize(resize_frames(x.contiguous(), h, w), p), p)
    return Video(patches, grid, group_timestamps(list(indices), video_fps, p.temporal_patch_size), list(indices))


# ----------------------------------------------------------------------------------------------------------------
# The prompt: the chat template's text, the processor's expansion, and where every row sits


def chat_text(question: str, system: str = None) -> str:
    """What Qwen3-VL's chat template writes for one user turn [video, question] and the generation prompt.
    Unlike Qwen2-VL's, it writes no system turn unless one is given."""
    sys_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{sys_turn}<|im_start|>user\n{VIDEO_WRAPPER}{question}<|im_end|>\n<|im_start|>assistant\n"


def expand_video(text: str, grid, timestamps: list, merge: int = 2) -> str:
    """The template's one video placeholder -> per temporal group "<{s:.1f} seconds>" + <|vision_start|> +
    Nv x <|video_pad|> + <|vision_end|>, as Qwen3VLProcessor writes it (its outer wrapper collapsed first)."""
    t, h, w = (int(g) for g in grid)
    if len(timestamps) != t:
        raise ValueError(f"{len(timestamps)} timestamps for {t} temporal groups: one per group")
    n = text.count(VIDEO_PAD)
    if n != 1:
        raise ValueError(f"the prompt has {n} {VIDEO_PAD} placeholders; a Qwen3-VL prompt here has exactly one video")
    Nv = h * w // merge**2
    # subtle: Python's .1f rounds the binary value, as the processor's f-string does: 0.25 -> "0.2", 0.35 -> "0.3"
    groups = "".join(f"<{s:.1f} seconds>{VISION_START}{VIDEO_PAD * Nv}{VISION_END}" for s in timestamps)
    text = text.replace(VIDEO_WRAPPER, VIDEO_PAD)
    return text.replace(VIDEO_PAD, groups)


def video_runs(ids: torch.Tensor, video_token_id: int, grid, merge: int = 2) -> list:
    """[(first row, length)] of the runs of video tokens in `ids`, checked against the grid: t runs of Nv."""
    t, h, w = (int(g) for g in grid)
    Nv = h * w // merge**2
    is_video = (torch.as_tensor(ids) == video_token_id).tolist()
    runs, start = [], None
    for i, v in enumerate(is_video + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    if len(runs) != t or any(n != Nv for _, n in runs):
        raise ValueError(f"the prompt's video tokens ({video_token_id}) come in runs of {[n for _, n in runs]}; "
                         f"grid {(t, h, w)} needs {t} run(s) of {Nv} (h*w/{merge**2}), one per temporal group")
    return runs


def video_rows(ids: torch.Tensor, video_token_id: int, grid, merge: int = 2) -> torch.Tensor:
    """(t, Nv): the prompt row of every merged token, group by group, each group's tokens row by row of its
    merged grid (the tower's output order). What LLM-VTP ranks per frame; row g is not row g-1 + Nv."""
    runs = video_runs(ids, video_token_id, grid, merge)
    return torch.stack([torch.arange(s, s + n) for s, n in runs])


def mrope_positions(ids: torch.Tensor, video_token_id: int, grid, merge: int = 2):
    """(positions (3, N) long, delta): the (t, h, w) position of every prompt row, as transformers'
    Qwen3VLModel.get_rope_index gives them for one prompt with one video, and its rope_deltas
    (largest position + 1 - N: what a decoded row adds to its index)."""
    ids = torch.as_tensor(ids)
    _, h, w = (int(g) for g in grid)
    gh, gw = h // merge, w // merge  # the merged grid of one group
    runs = dict(video_runs(ids, video_token_id, grid, merge))
    pos = torch.empty(3, len(ids), dtype=torch.long)
    i, p = 0, 0  # row, and the position the next text row gets
    while i < len(ids):
        if i in runs:  # one temporal group: (p, p + row, p + col) for each merged token, row by row
            r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            pos[:, i:i + gh * gw] = torch.stack([torch.zeros(gh * gw, dtype=torch.long), r.flatten(),
                                                 c.flatten()]) + p
            i, p = i + gh * gw, p + max(gh, gw)
        else:
            pos[:, i] = p
            i, p = i + 1, p + 1
    return pos, int(pos.max()) + 1 - len(ids)


@dataclass
class PromptLayout:  # not hosts.Prompt: the ids and where everything sits, before any embedding
    ids: torch.Tensor  # (N,) token ids
    rows: torch.Tensor  # (t, Nv): frame g's tokens sit at rows[g]; the tower's output row g*Nv + k goes to rows[g, k]
    positions: torch.Tensor  # (3, N): (t, h, w) of every row
    delta: int  # transformers' rope_deltas: decoded row n is at position n + delta

    @property
    def question_start(self) -> int:  # the first row after the last video token: <|vision_end|>, the question, ...
        return int(self.rows[-1, -1]) + 1


def build_prompt(tokenizer, question: str, video: Video, video_token_id: int, merge: int = 2,
                 system: str = None) -> PromptLayout:
    """The whole prompt of one question about one video: template, expansion, ids, rows and positions.

    `tokenizer` is minivtp.tokenizer.Tokenizer on the checkpoint's tokenizer.json; `video_token_id` is
    config.json's, which must be the tokenizer's <|video_pad|>."""
    if tokenizer.added.get(VIDEO_PAD) != video_token_id:
        raise ValueError(f"the tokenizer's {VIDEO_PAD} is {tokenizer.added.get(VIDEO_PAD)}, the model's "
                         f"video_token_id is {video_token_id}: tokenizer.json and config.json disagree")
    text = expand_video(chat_text(question, system), video.grid, video.timestamps, merge)
    ids = torch.tensor(tokenizer.encode(text))
    positions, delta = mrope_positions(ids, video_token_id, video.grid, merge)
    return PromptLayout(ids, video_rows(ids, video_token_id, video.grid, merge), positions, delta)


# ----------------------------------------------------------------------------------------------------------------
# The loader's names: transformers' save_pretrained layout of Qwen3VLForConditionalGeneration

# model.visual.*          the tower (qwen3_vit.QWEN3_VISION_TO_OURS)          -> vision.*
# model.language_model.*  a Qwen3 decoder: LLaMA's names, plus q_norm and k_norm  -> llm.*
# lm_head.*               the output projection (absent when tied)             -> llm.output.*
QWEN3_VL_TO_OURS = (
    [(r"model\.visual\." + p, "vision." + r) for p, r in QWEN3_VISION_TO_OURS]
    + [(r"model\.language_model\.layers\.(\d+)\.self_attn\.q_norm\.", r"llm.layers.\1.attn.q_norm."),
       (r"model\.language_model\.layers\.(\d+)\.self_attn\.k_norm\.", r"llm.layers.\1.attn.k_norm.")]
    + [(r"model\.language_model\." + p[len(r"model\."):], "llm." + r) for p, r in HF_TO_OURS
       if p.startswith(r"model\.")]
    + [(r"lm_head\.", "llm.output.")]
)


def qwen3_vl_to_ours(name: str):
    """A Qwen3-VL checkpoint's tensor name -> our parameter name (vision.* or llm.*); None if unknown."""
    return apply_rules(name, QWEN3_VL_TO_OURS)


def load_tower(path, dtype=torch.float32, device="cpu"):
    """The vision tower alone from a Qwen3-VL directory: every model.visual.* tensor used, every parameter of
    the tower filled (the decoder's tensors are recognised and left for the host)."""
    path, hf, files, weight_map = open_checkpoint(path)
    if hf.get("model_type") != "qwen3_vl" or not isinstance(hf.get("vision_config"), dict):
        raise CheckpointError(f"{path}/config.json: model_type {hf.get('model_type')!r} is not Qwen3-VL's "
                              "(qwen3_vl, with a vision_config)")
    tower = build_on_meta(path, lambda: Qwen3VisionTower(Qwen3VisionConfig.from_hf(hf["vision_config"])),
                          "Qwen3-VL's vision tower")

    def rename(name):
        ours = qwen3_vl_to_ours(name)
        if ours is not None and ours.startswith("llm."):
            return ""  # the decoder's, not the tower's
        return None if ours is None else re.sub(r"^vision\.", "", ours)

    load_into(tower, files, rename, dtype, device, weight_map)
    return tower.eval()


# ----------------------------------------------------------------------------------------------------------------
# The host: the pieces above on the host contract (minivtp/hosts/__init__.py)


class Qwen3VL(Host):
    """Qwen3-VL's tower, DeepStack mergers and Qwen3 decoder (M-RoPE interleaved, per-head q/k norm).

    What differs from the other hosts, each said where it happens: the prompt's ids are made in `prompt`, once the
    video's timestamps are known (`encode` gives the template's ids and the text to expand); `prompt` returns the
    video's rows as frames apart (VideoSpan.frame_starts), M-RoPE's (3, N) positions and DeepStack's rows."""

    placeholder = VIDEO_PAD

    def __init__(self, text: Config, vision: Qwen3VisionConfig, video_token: int, processing: VideoProcessing = None,
                 frames: int = 32, video_fps: float = 2.0):
        super().__init__()
        self.vision = Qwen3VisionTower(vision)
        self.llm = Transformer(text)
        self.image_token, self.processing = video_token, processing or VideoProcessing()
        # subtle: minivtp reads a video by frame count (frames.py), not by time; the timestamps in the prompt take
        # the frames read as `video_fps` frames a second, the rate Qwen3-VL's processor samples at (2)
        self.frames, self.video_fps = frames, video_fps

    @classmethod
    def from_hf(cls, hf: dict, processing: VideoProcessing = None) -> "Qwen3VL":
        text = dict(hf.get("text_config") or {})
        text["model_type"] = "qwen3_vl_text"
        text.setdefault("tie_word_embeddings", hf.get("tie_word_embeddings", False))
        return cls(config_from_hf(text), Qwen3VisionConfig.from_hf(hf.get("vision_config") or {}),
                   hf.get("video_token_id", 151656), processing, frames=hf.get("num_frames") or 32)

    def sample_indices(self, n_available: int, n: int):  # n frames spread over the video, first and last included
        if n_available < 1:
            raise ValueError("the video has no frames")
        return [round(i * (n_available - 1) / max(1, n - 1)) for i in range(n)]

    def preprocess(self, frames) -> Video:
        x = torch.stack(list(frames)) if not isinstance(frames, torch.Tensor) else frames
        return preprocess(x, self.video_fps, self.processing, indices=list(range(x.shape[0])))

    def encode(self, tok, question: str, template: str = None):
        """The chat template's ids with ONE <|video_pad|>, and what `prompt` expands them from: the text and the
        tokenizer (the timestamps are text, written once the video is read)."""
        text = chat_text(question) + ((PLLAVA_TEMPLATES[template][6] or "") if template else "")
        if tok.added.get(VIDEO_PAD) != self.image_token:
            raise ValueError(f"the tokenizer's {VIDEO_PAD} is {tok.added.get(VIDEO_PAD)}, the model's "
                             f"video_token_id is {self.image_token}: tokenizer.json and config.json disagree")
        return torch.tensor(tok.encode(text)), dict(text=text, tok=tok)

    def check_tokenizer(self, tok, where):
        if tok.added.get(VIDEO_PAD) != self.image_token:
            raise ValueError(f"{where}: the tokenizer's {VIDEO_PAD} is {tok.added.get(VIDEO_PAD)}, the model's "
                             f"video_token_id is {self.image_token}")

    def prompt(self, ids, pixels: Video, text: str = None, tok=None) -> Prompt:
        """The expanded prompt (a timestamp and <|vision_start|> ... <|vision_end|> around each temporal group)
        -> Prompt(embeds (1, N, C), VideoSpan with frame_starts, positions (3, N), DeepStack's rows)."""
        merge = self.vision.cfg.merge_size
        ids = torch.tensor(tok.encode(expand_video(text, pixels.grid, pixels.timestamps, merge)), device=ids.device)
        positions, _ = mrope_positions(ids, self.image_token, pixels.grid, merge)  # (3, N)
        rows = video_rows(ids, self.image_token, pixels.grid, merge).to(ids.device)  # (t, Nv)
        tokens, deep = self.vision(pixels.patches, pixels.grid)  # (t*Nv, C), [(t*Nv, C) per DeepStack layer]
        x = self.llm.embed(ids)  # (N, C)
        # Eq. 1: the video's tokens where the processor put its pads, group by group (text between the groups)
        x = x.index_copy(0, rows.flatten(), tokens.to(x.dtype))
        added = {}
        for k, feature in enumerate(deep):  # DeepStack: after decoder layer k, at the video's rows
            added[k] = torch.zeros_like(x).index_copy(0, rows.flatten(), feature.to(x.dtype))
        t, Nv = rows.shape
        span = VideoSpan(int(rows[0, 0]), t, Nv, frame_starts=tuple(int(r) for r in rows[:, 0]))
        span.check(x.shape[0], video_rows=t * Nv)
        return Prompt(x[None], span, positions.to(ids.device), added)

    def class_attention(self, pixels):
        raise ValueError("PruMerge+ ranks patches by their attention to a class token; Qwen3-VL's ViT has none, "
                         "so PruMerge+ does not apply to Qwen3-VL")


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> Qwen3VL:
    """A ready host from a Qwen3-VL directory transformers' save_pretrained wrote (weights.load_video_llm)."""
    path, hf, files, index = open_checkpoint(path)
    no_lora(path, hf, lora_alpha)
    model = build_on_meta(path, lambda: Qwen3VL.from_hf(hf, VideoProcessing.from_dir(path)), "Qwen3-VL")
    tied = model.llm.cfg.tie_embeddings
    rename = lambda n: "" if tied and n == "lm_head.weight" else qwen3_vl_to_ours(n)  # noqa: E731
    info = load_into(model, files, rename, dtype, device, index, progress)
    if tied:
        model.llm.output.weight = model.llm.embed.weight
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()
