"""From pixels to video tokens: the CLIP ViT vision tower, the multi-modal projector, PLLaVA's pooling and
Tarsier's frame layout, and the video LLM that puts them in front of `model.Transformer`.

    frames (T, 3, 336, 336) --CLIP ViT-L/14--> (T, 1+576, 1024) --layer -2, drop CLS--> (T, 576, 1024)
        --projector--> (T, 576, 4096) --PLLaVA: adaptive avg pool over (T, 24, 24) to (16, 12, 12)--> (2304, 4096)

Dimensions: T frames, P patches per frame (h x w), Cv vision width, C language width, Nv tokens per frame
after pooling or layout.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from minivtp.checkpoint import (
    DERIVED,
    CheckpointError,
    apply_rules,
    hf_to_ours,
    load_into,
    open_checkpoint,
    open_shard,
)
from minivtp.hf_config import config_from_hf
from minivtp.hosts import Host, Prompt
from minivtp.hosts.frames import sample_indices
from minivtp.hosts.prompts import PLLAVA_TEMPLATES, pllava_prompt, tarsier_prompt
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    dim: int = 1024  # Cv
    n_layers: int = 24
    n_heads: int = 16
    hidden_dim: int = 4096
    image_size: int = 336
    patch_size: int = 14
    eps: float = 1e-5
    act: str = "quick_gelu"

    @property
    def grid(self) -> int:  # patches per side: 336 / 14 = 24
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, hf: dict) -> "VisionConfig":
        act = hf.get("hidden_act", "quick_gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"vision hidden_act {act!r} is not supported (known: {', '.join(ACTIVATIONS)})")
        return cls(dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
                   hidden_dim=hf["intermediate_size"], image_size=hf["image_size"], patch_size=hf["patch_size"],
                   eps=hf.get("layer_norm_eps", 1e-5), act=act)


def quick_gelu(x):  # CLIP's GELU approximation: x * sigmoid(1.702 x)
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu,
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}  # SigLIP's (minivtp/hosts/siglip.py)


class VisionBlock(nn.Module):  # pre-norm ViT layer, LayerNorm and biases everywhere, no causal mask
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.n_heads, self.act = cfg.n_heads, ACTIVATIONS[cfg.act]
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden_dim)
        self.fc2 = nn.Linear(cfg.hidden_dim, cfg.dim)

    def forward(self, x):  # (T, 1+P, Cv) -> (T, 1+P, Cv)
        h = self.norm1(x)
        q, k, v = (rearrange(w(h), "t n (h d) -> t h n d", h=self.n_heads) for w in (self.wq, self.wk, self.wv))
        a = F.scaled_dot_product_attention(q, k, v)  # (T, H, 1+P, D): every patch sees every patch
        x = x + self.wo(rearrange(a, "t h n d -> t n (h d)"))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class VisionTower(nn.Module):
    """CLIP's vision transformer, up to the features of one layer (the last norm is loaded but not used)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls = nn.Parameter(torch.zeros(cfg.dim))
        self.pos = nn.Embedding(cfg.grid**2 + 1, cfg.dim)
        self.pre_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)  # "pre_layrnorm" in the checkpoints (sic)
        self.layers = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.n_layers))
        self.post_norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)

    def forward(self, pixels, layer: int = -2):
        """pixels (T, 3, S, S), CLIP-normalised -> hidden states of `layer` (T, 1+P, Cv).

        Layer numbering is Hugging Face's `hidden_states`: 0 is the embeddings, i the output of block i, and -2
        the second to last block, which is what LLaVA-family models read."""
        n = self.cfg.n_layers
        stop = layer % (n + 1)
        x = rearrange(self.patch(pixels.to(self.patch.weight.dtype)), "t c h w -> t (h w) c")  # (T, P, Cv)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos.weight  # (T, 1+P, Cv)
        x = self.pre_norm(x)
        for block in self.layers[:stop]:
            x = block(x)
        return x


class Projector(nn.Module):  # linear, GELU, linear: vision width -> language width
    def __init__(self, vision_dim, dim, act="gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x):  # (..., Cv) -> (..., C)
        return self.linear_2(self.act(self.linear_1(x)))


def pllava_pool(x, grid: int, shape):
    """PLLaVA: average-pool projected frame features over (frames, h, w) to `shape`, then flatten frame by frame.

    x (T, h*w, C) -> (T' * h' * w', C), with (T', h', w') = shape. Frames stay contiguous, so the result is
    described by VideoSpan(start, T', h' * w')."""
    v = rearrange(x, "t (h w) c -> 1 c t h w", h=grid)  # (1, C, T, h, w)
    v = F.adaptive_avg_pool3d(v, tuple(shape))  # (1, C, T', h', w')
    return rearrange(v, "1 c t h w -> (t h w) c")


def tarsier_layout(x, grid: int, newline, frame_sep):
    """Tarsier: each frame's h x w tokens row by row, a newline embedding after every row and a separator
    embedding after the frame. x (T, h*w, C) -> (T * (h*(w+1) + 1), C); Nv = h*(w+1) + 1 per frame."""
    T, _, C = x.shape
    rows = rearrange(x, "t (h w) c -> t h w c", h=grid)  # (T, h, w, C)
    rows = torch.cat([rows, newline.expand(T, grid, 1, C)], dim=2)  # (T, h, w+1, C)
    frames = torch.cat([rearrange(rows, "t h w c -> t (h w) c"), frame_sep.expand(T, 1, C)], dim=1)
    return rearrange(frames, "t n c -> (t n) c")


# What old LLaVA configs leave out because it is the library default: Vicuna-7B's and CLIP ViT-L/336's sizes.
LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6)
CLIP_L336_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)


class VideoLLM(Host):
    """Vision tower + projector + a token arrangement + minivtp's Transformer (PLLaVA, Tarsier, or plain LLaVA)."""

    def __init__(self, text: Config, vision: VisionConfig, arrangement="pllava", pooling_shape=(16, 12, 12),
                 feature_layer=-2, select="default", projector_act="gelu", image_token=32000,
                 newline_token=None, frame_token=None, frames=16):
        super().__init__()
        if arrangement not in ("pllava", "tarsier", "llava"):
            raise ValueError(f"arrangement {arrangement!r} must be 'pllava', 'tarsier' or 'llava'")
        if select not in ("default", "full"):
            raise ValueError(f"vision_feature_select_strategy {select!r} must be 'default' or 'full'")
        self.vision = VisionTower(vision)
        self.projector = Projector(vision.dim, text.dim, projector_act)
        self.llm = Transformer(text)
        self.arrangement, self.pooling_shape, self.frames = arrangement, tuple(pooling_shape), frames
        self.feature_layer, self.select, self.image_token = feature_layer, select, image_token
        self.newline_token, self.frame_token = newline_token, frame_token

    @classmethod
    def from_hf(cls, hf: dict) -> "VideoLLM":
        """Built (on the current device, meta included) from a LLaVA / PLLaVA / Tarsier `config.json`."""
        text = dict(LLAMA_DEFAULTS, **hf.get("text_config", {}))  # old configs name only what differs
        text.setdefault("model_type", "llama")
        vision = dict(CLIP_L336_DEFAULTS, **hf.get("vision_config", {}))
        if "pooling_shape" in hf or hf.get("model_type") == "pllava":
            arrangement = "pllava"
        elif "image_newline_idx" in hf:
            arrangement = "tarsier"
        else:
            arrangement = "llava"
        pooling = tuple(hf.get("pooling_shape") or (16, 12, 12))
        return cls(config_from_hf(text), VisionConfig.from_hf(vision), arrangement=arrangement, pooling_shape=pooling,
                   feature_layer=hf.get("vision_feature_layer", -2),
                   select=hf.get("vision_feature_select_strategy", "default"),
                   projector_act=hf.get("projector_hidden_act", "gelu"), image_token=hf.get("image_token_index", 32000),
                   newline_token=hf.get("image_newline_idx"), frame_token=hf.get("image_new_idx"),
                   frames=hf.get("num_frames") or (8 if arrangement == "tarsier" else pooling[0]))

    placeholder = "<image>"  # the tokenizer's name for image_token

    def sample_indices(self, n_available: int, n: int):  # which frames of a video it reads (PLLaVA's way)
        return sample_indices(n_available, n)

    def preprocess(self, frames):  # frames (H, W, 3) uint8 each -> (T, 3, S, S), CLIP-normalised
        return preprocess(frames, self.vision.cfg.image_size)

    def tokens_per_frame(self) -> int:
        g = self.vision.cfg.grid
        if self.arrangement == "pllava":
            return self.pooling_shape[1] * self.pooling_shape[2]
        if self.arrangement == "tarsier":
            return g * (g + 1) + 1
        return g * g + (1 if self.select == "full" else 0)

    def video_tokens(self, pixels):
        """pixels (T, 3, S, S) -> (video rows, C) and the number of frames they form."""
        feats = self.vision(pixels, self.feature_layer)  # (T, 1+P, Cv)
        if self.select == "default":
            feats = feats[:, 1:]  # drop CLS: (T, P, Cv)
        return self.arrange(self.projector(feats))

    def arrange(self, x):
        """Projected patch features (T, P, C) -> (video rows, C) as the model lays them out, and the frame count."""
        grid = self.vision.cfg.grid
        if self.arrangement == "pllava":
            if self.select != "default":
                raise ValueError("PLLaVA pooling needs the patch grid: vision_feature_select_strategy 'default'")
            return pllava_pool(x, grid, self.pooling_shape), self.pooling_shape[0]
        if self.arrangement == "tarsier":
            emb = self.llm.embed.weight
            return tarsier_layout(x, grid, emb[self.newline_token], emb[self.frame_token]), x.shape[0]
        return rearrange(x, "t p c -> (t p) c"), x.shape[0]

    def class_attention(self, pixels):
        """What PruMerge+ (rivals/prumerge.py) reads, frame by frame: (x (T', P', C*) the rows it merges, keys
        (T', P', Cv), a (T', P') their [CLS] attention, finish(rows, t) -> frame t's rows for the LLM)."""
        from minivtp.rivals.prumerge import (
            cls_attention,  # the rival's own rule, read on this host's tower
        )

        n = self.vision.cfg.n_layers
        after = self.feature_layer % (n + 1)  # the block whose attention PruMerge reads: the one after the features
        if after >= n:
            raise ValueError(f"PruMerge+ reads the vision block after the feature layer; layer {self.feature_layer} "
                             "is the last")
        h = self.vision(pixels, self.feature_layer)  # (T, 1+P, Cv)
        a, keys = cls_attention(self.vision.layers[after], h)  # (T, P), (T, P, Cv)
        patches = h[:, 1:]  # (T, P, Cv)
        if self.arrangement == "pllava":  # pool attention and keys like the features, merge after the projector
            T, grid = self.pooling_shape[0], self.vision.cfg.grid
            pooled = lambda t: pllava_pool(t, grid, self.pooling_shape).view(T, -1, t.shape[-1])  # noqa: E731
            x = pooled(self.projector(patches))  # (T', h'w', C)
            return x, pooled(keys.float()), pooled(a.float()[..., None])[..., 0], lambda rows, t: rows
        # plain LLaVA and Tarsier: merge in CLIP's space, then project (and Tarsier's frame separator after)
        sep = self.llm.embed.weight[self.frame_token] if self.arrangement == "tarsier" else None

        def finish(rows, t):
            rows = self.projector(rows)
            return rows if sep is None else torch.cat([rows, sep[None].to(rows.dtype)])

        return patches, keys, a, finish

    def prompt_text(self, question: str, template: str = None) -> str:
        """PLLaVA's conversation `template` ('plain' unless a benchmark names one); Tarsier's own prompt, then the
        template's answer prompt ("Best option:(" for MVBench)."""
        if self.arrangement == "tarsier":
            return tarsier_prompt(question) + ((PLLAVA_TEMPLATES[template][6] or "") if template else "")
        return pllava_prompt(question, template or "plain")

    def prompt(self, ids: torch.Tensor, pixels) -> Prompt:
        """Token ids (N0,) with ONE image token where the video goes -> Prompt(embeds (1, N, C), VideoSpan,
        positions (N,))."""
        video, T = self.video_tokens(pixels)
        embeds, start = self.splice(ids, video)  # Eq. 1
        span = VideoSpan(start, T, video.shape[0] // T)
        span.check(embeds.shape[1], video_rows=video.shape[0])
        return Prompt(embeds, span, torch.arange(embeds.shape[1], device=embeds.device))

    def cells(self, Nv: int):
        g = self.vision.cfg.grid
        if self.arrangement == "pllava":
            h, w = self.pooling_shape[1:]
            return [(j // w, j % w) for j in range(h * w)], (h, w)
        if self.arrangement == "tarsier":  # each row of the grid ends in a newline, the frame in a separator
            return [(j // (g + 1), j % (g + 1)) if j < g * (g + 1) and j % (g + 1) != g else None
                    for j in range(Nv)], (g, g)
        first = Nv - g * g  # a [CLS] token first when the features keep it
        return [None] * first + [(j // g, j % g) for j in range(g * g)], (g, g)


def preprocess(frames, size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """frames, each (H, W, 3) uint8 (a list, or a (T, H, W, 3) tensor) -> (T, 3, size, size) float32: shortest side
    resized to `size` (bicubic, antialiased), centre crop, scaled to 0..1, CLIP mean and std. Each frame on its
    own, so a folder of photos of different sizes is fine."""
    if isinstance(frames, torch.Tensor) and (frames.dim() != 4 or frames.shape[-1] != 3):
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(frames.shape)}")
    return torch.stack([preprocess_one(f, size, mean, std) for f in frames])


def preprocess_one(frame, size: int, mean=CLIP_MEAN, std=CLIP_STD):  # (H, W, 3) uint8 -> (3, size, size)
    if frame.dim() != 3 or frame.shape[-1] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f"a frame must be (H, W, 3) uint8, got {tuple(frame.shape)} {frame.dtype}")
    x = rearrange(frame, "h w c -> 1 c h w").float() / 255
    H, W = x.shape[-2:]
    scale = size / min(H, W)
    h, w = max(size, round(H * scale)), max(size, round(W * scale))
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (h - size) // 2, (w - size) // 2
    x = x[0, :, top : top + size, left : left + size]  # (3, size, size)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


# --------------------------------------------------------------------------------------------------------------
# Loading: LLaVA-family names -> ours, LoRA adapters merged

# LLaVA-family checkpoints: where each part's tensors live, in the layouts transformers has written over time.
#   language model   language_model.model.* + language_model.lm_head.*   (<= v4.51, and v5's save_pretrained)
#                    model.language_model.* + lm_head.*                    (v4.52 .. v4.5x)
#                    language_model.base_model.model.model.*               (a PEFT-wrapped model saved whole)
#   vision tower     vision_tower.vision_model.*  or  vision_tower.*  (each possibly under "model.")
#   projector        multi_modal_projector.linear_1 / linear_2
VISION_TO_OURS = [
    (r"embeddings\.patch_embedding\.", "patch."),
    (r"embeddings\.class_embedding$", "cls"),
    (r"embeddings\.position_embedding\.", "pos."),
    (r"pre_layrnorm\.", "pre_norm."),
    (r"post_layernorm\.", "post_norm."),
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.", r"layers.\1.wq."),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj\.", r"layers.\1.wk."),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj\.", r"layers.\1.wv."),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.wo."),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.", r"layers.\1.norm1."),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.", r"layers.\1.norm2."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.", r"layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.", r"layers.\1.fc2."),
]


LORA = re.compile(r"(.*)\.lora_([AB])(?:\.default)?\.weight")


def llava_to_ours(name: str):
    """A LLaVA-family tensor name -> our VideoLLM parameter name; "" for derived buffers; None if unknown.
    LoRA tensors are not parameters and are handled by the caller."""
    name = re.sub(r"^model\.(?=vision_tower|multi_modal_projector|language_model)", "", name)
    if name.startswith("vision_tower."):
        rest = re.sub(r"^vision_tower\.(vision_model\.)?", "", name)
        if rest == "embeddings.position_ids":
            return ""  # arange(P + 1), a buffer in old checkpoints
        ours = apply_rules(rest, VISION_TO_OURS)
        return None if ours is None else "vision." + ours
    if name.startswith("multi_modal_projector."):
        return "projector." + name[len("multi_modal_projector."):]
    if name.startswith("language_model."):
        rest = name[len("language_model."):]
        rest = re.sub(r"^base_model\.model\.", "", rest)  # PEFT wrapper
        rest = re.sub(r"\.base_layer\.", ".", rest)  # PEFT keeps the frozen weight as X.base_layer.weight
        if re.match(r"(layers|embed_tokens|norm)\b", rest):
            rest = "model." + rest  # the v4.52 layout drops the inner "model."
        if DERIVED.fullmatch(rest):
            return ""
        ours = hf_to_ours(rest)
        return None if ours is None else "llm." + ours
    if name.startswith("lm_head."):  # the v4.52 layout keeps the head at the top level
        return "llm." + hf_to_ours(name)
    return None


def merge_lora(model, lora: dict, path: Path, hf: dict, lora_alpha, device) -> dict:
    alpha = lora_alpha
    adapter = path / "adapter_config.json"
    if alpha is None and adapter.is_file():
        alpha = json.loads(adapter.read_text()).get("lora_alpha")
    if alpha is None:
        alpha = hf.get("lora_alpha")
    if alpha is None:
        raise CheckpointError(f"{path}: holds unmerged LoRA adapters but no lora_alpha (give --lora-alpha on the "
                              "command line or lora_alpha=... to load_video_llm; PLLaVA's scripts use 4)")
    params = dict(model.named_parameters())
    ranks = set()
    for target, pair in sorted(lora.items()):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{path}: LoRA for {target} has only lora_{''.join(pair)}")
        if str(device) == "meta":
            continue
        (fa, na), (fb, nb) = pair["A"], pair["B"]
        A = open_shard(fa).get_tensor(na).float()  # (r, in)
        B = open_shard(fb).get_tensor(nb).float()  # (out, r)
        W = params[target]
        if A.shape[1] != W.shape[1] or B.shape[0] != W.shape[0] or A.shape[0] != B.shape[1]:
            raise CheckpointError(f"{fa.name}: LoRA {na} {list(A.shape)} / {nb} {list(B.shape)} do not fit "
                                  f"{target} {list(W.shape)}")
        r = A.shape[0]
        ranks.add(r)
        with torch.no_grad():  # subtle: merge in float32, then round once to the model's dtype
            W.copy_((W.float() + (alpha / r) * (B.to(W.device) @ A.to(W.device))).to(W.dtype))
    return dict(targets=len(lora), lora_alpha=alpha, ranks=sorted(ranks))


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> VideoLLM:
    """A ready LLaVA / PLLaVA / Tarsier host from its checkpoint directory (weights.load_video_llm calls this).

    Unmerged LoRA adapters (X.lora_A / X.lora_B beside X's weight) are merged at load time:
    W = W + (lora_alpha / r) * B @ A. PLLaVA's released weights need this; its inference scripts pass
    --lora_alpha 4 with r = 128 (docs/checkpoints.md). lora_alpha comes from, in order: the argument,
    adapter_config.json in the directory, "lora_alpha" in config.json; with adapters and none of these, an error.
    """
    path, hf, files, index = open_checkpoint(path)
    with torch.device("meta"):
        model = VideoLLM.from_hf(hf)
    lora = {}  # target parameter -> {"A": (file, name), "B": (file, name)}
    current = {}

    def rename(name):
        m = LORA.fullmatch(name)
        if m:
            target = llava_to_ours(m.group(1) + ".weight")
            if target is None:
                raise CheckpointError(f"{current['file'].name}: LoRA tensor {name} adapts nothing this model has")
            lora.setdefault(target, {})[m.group(2)] = (current["file"], name)
            return ""
        return llava_to_ours(name)

    def track(i, n, file):
        current["file"] = file
        if progress:
            progress(i, n, file)

    info = load_into(model, files, rename, dtype, device, index, progress=track)
    if model.llm.cfg.tie_embeddings:
        model.llm.output.weight = model.llm.embed.weight
    if lora:
        info["lora_merged"] = merge_lora(model, lora, path, hf, lora_alpha, device)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()
