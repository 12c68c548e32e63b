"""ST-LLM (Liu et al. 2024, TencentARC/ST-LLM), its QA model `instructblipbase_stllm_qa`: InstructBLIP's EVA
ViT-g and Q-Former with a BT-Adapter beside the tower's last blocks, every frame's 32 query tokens in order, into
Vicuna-7B v1.1. This file holds the BT-Adapter, the prompt and ST-LLM's checkpoint names; the Q-Former host
itself is instructblip.py's.

The LLM's prompt on MVBench, rows (`mv_bench.py` with --ask_simple: the video first, no system rows before it):

    prompt rows   0 .. T*32-1        video: frame 0's 32 query tokens, frame 1's, ...     VideoSpan(0, T, 32)
                  T*32               </s>: ST-LLM's tokenizer has </s> as its BOS (st_llm.py:308)
                  T*32+1 .. N-1      "###Human: " system, "Question: ... Options: (A) ...", "\\nOnly give the best
                                     option.\\n###Assistant: Best option:("       LLM-VTP's question rows

The Q-Former reads "Question: ... Options: ..." (without the system prompt or "Only give the best option.").
`answer` uses the same layout with "###Human: {question}\\n###Assistant:" (our choice: ST-LLM's demo builds a
multi-turn conversation instead).

The BT-Adapter (eva_btadapter.py), a second stream of depth 3 beside the tower's last 3 blocks, which sees all
T frames at once: its rows are [CLS] then the patches patch-major, time-minor, "(p t)":

    branch rows   0                  one [CLS] for the clip
                  1 + p*T + t        patch p of frame t (so one patch's T frames are consecutive)

    after tower block n-3+j (j = 0, 1, 2):
        j = 0: branch = [mean_t CLS_t, tower patches + ViT positions + time embedding(t)], the CLS averaged with
               the adapter's own [CLS]
        j > 0: branch = branch + [mean_t CLS_t, tower patches in (p t) order]
        branch = temporal(branch): every patch attends over its T frames (+ temporal_fc), [CLS] untouched
        branch = spatial(branch):  every frame attends over its patches (a ViT block), the CLS copied to
                                   each frame, the T outputs averaged
    out = (tower's last output + branch back in frame layout) / 2, then ln_vision, then the Q-Former per frame.

A worked example: T = 16 frames at fps 1 (its MVBench setting gives 4..16 frames by the video's length; minivtp
takes 16), 16 x 32 = 512 video rows; alpha = 0.1 keeps ceil(3.2) = 4 of every frame's 32, 64 rows.

Sources (file:line in TencentARC/ST-LLM): config/instructblipbase_stllm_qa.yaml (qformer_text_input, 16
frames, end_sym ###); stllm/models/st_llm.py:321-377 (`encode_img`), :94-203 (checkpoint layout, `ckpt` loaded
strict=False); stllm/models/eva_btadapter.py:147-310 (the adapter); stllm/test/mvbench/mv_bench.py:229-283 and
stllm/conversation/mvbench_conversation.py:14-85 (the prompt).
"""

import torch
from einops import rearrange
from torch import nn

from minivtp import checkpoint
from minivtp.hf_config import config_from_hf
from minivtp.hosts.eva_vit import EvaAttention, EvaBlock, EvaConfig, EvaViT
from minivtp.hosts.instructblip import (
    QFORMER_RULES,
    QFormerVideoLLM,
    lavis_block_rules,
    squeezed,
)
from minivtp.hosts.qformer import QFormerConfig, WordPiece

# The MVBench prompt of ST-LLM's mv_bench.py (system_llm is on by default: its flag is store_false)
SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
          "of objects, and the action and pose of persons. Based on your observations, select the best option that "
          "accurately addresses the question.\n")


class TemporalBlock(nn.Module):  # BTAdapter_Temp: each patch over time; [CLS] passes through
    def __init__(self, cfg: EvaConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn = EvaAttention(cfg.dim, cfg.n_heads)
        self.temporal_fc = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, T: int):  # (1, 1 + P*T, Cv) -> same
        cls, patches = x[:, :1], x[:, 1:]
        y = rearrange(patches, "1 (p t) c -> p t c", t=T)  # (P, T, Cv): one patch's frames are one sequence
        y = self.temporal_fc(self.attn(self.norm1(y)))
        return torch.cat([cls, patches + rearrange(y, "p t c -> 1 (p t) c")], dim=1)


class SpatialBlock(EvaBlock):  # BTAdapter_Spatial: a ViT block run on each frame, the clip's [CLS] shared
    def forward(self, x, T: int):  # (1, 1 + P*T, Cv) -> same
        cls, patches = x[:, :1], x[:, 1:]
        frames = torch.cat([cls.expand(T, 1, -1), rearrange(patches, "1 (p t) c -> t p c", t=T)], dim=1)  # (T, 1+P, Cv)
        y = self.attn(self.norm1(frames))  # (T, 1+P, Cv)
        # subtle: the residual is the branch's single [CLS], so the T frames' [CLS] outputs are averaged into it
        x = x + torch.cat([y[:, :1].mean(dim=0, keepdim=True), rearrange(y[:, 1:], "t p c -> 1 (p t) c")], dim=1)
        return x + self.mlp(self.norm2(x))


class BTAdapter(nn.Module):
    def __init__(self, cfg: EvaConfig, depth: int = 3, max_frames: int = 64):
        super().__init__()
        self.depth, self.max_frames = depth, max_frames
        self.cls = nn.Parameter(torch.zeros(cfg.dim))
        self.time = nn.Embedding(max_frames, cfg.dim)
        self.temporal = nn.ModuleList(TemporalBlock(cfg) for _ in range(depth))
        self.spatial = nn.ModuleList(SpatialBlock(cfg) for _ in range(depth))

    def start(self, x, pos):  # init_input: the tower's rows (T, 1+P, Cv) -> the branch (1, 1 + P*T, Cv)
        T = x.shape[0]
        cls_mean = x[:, 0].mean(dim=0)  # (Cv,): the tower's [CLS] averaged over frames
        own = torch.cat([self.cls.expand(T, 1, -1), x[:, 1:]], dim=1) + pos  # (T, 1+P, Cv), ViT's positions again
        patches = rearrange(own[:, 1:], "t p c -> p t c") + self.time.weight[:T]  # (P, T, Cv) + time embedding
        cls = (cls_mean + own[0, 0]) / 2  # with the adapter's [CLS] (+ position 0)
        return torch.cat([cls[None, None], rearrange(patches, "p t c -> 1 (p t) c")], dim=1)

    def step(self, j: int, x, branch, pos):  # after tower block n - depth + j
        T = x.shape[0]
        if j == 0:
            branch = self.start(x, pos)
        else:
            branch = branch + torch.cat([x[:, 0].mean(dim=0)[None, None], rearrange(x[:, 1:], "t p c -> 1 (p t) c")], 1)
        return self.spatial[j](self.temporal[j](branch, T), T)


class STLLMTower(nn.Module):
    """EVA ViT-g with the BT-Adapter beside its last `depth` blocks: pixels (T, 3, S, S) -> (T, 1+P, Cv), normed."""

    def __init__(self, cfg: EvaConfig, depth: int = 3, max_frames: int = 64):
        super().__init__()
        if depth > cfg.n_layers:
            raise ValueError(f"BT-Adapter depth {depth} is more than the tower's {cfg.n_layers} blocks")
        self.vit = EvaViT(cfg)
        self.adapter = BTAdapter(cfg, depth, max_frames)

    @property
    def cfg(self) -> EvaConfig:
        return self.vit.cfg

    def forward(self, pixels):
        T, n, depth = pixels.shape[0], self.cfg.n_layers, self.adapter.depth
        if T > self.adapter.max_frames:
            raise ValueError(f"{T} frames: the BT-Adapter's time embedding has {self.adapter.max_frames} positions")
        x = self.vit.embed(pixels)  # (T, 1+P, Cv)
        branch = None
        for i, block in enumerate(self.vit.layers):
            x = block(x)
            if i >= n - depth:
                branch = self.adapter.step(i - (n - depth), x, branch, self.vit.pos)  # (1, 1 + P*T, Cv)
        back = torch.cat([branch[:, :1].expand(T, 1, -1), rearrange(branch[:, 1:], "1 (p t) c -> t p c", t=T)], 1)
        return self.vit.norm((x + back) / 2)  # (T, 1+P, Cv): ln_vision


class STLLM(QFormerVideoLLM):
    stop_text = "###"  # its end symbol (config/instructblipbase_stllm_qa.yaml:6)

    def prompt_ids(self, tok, question: str, mvbench: bool = False) -> list:
        if tok.eos is None:
            raise ValueError("the tokenizer has no </s>, which ST-LLM puts after the video as its BOS")
        if mvbench:
            text = f"###Human: {SYSTEM}{question}\nOnly give the best option.\n###Assistant: Best option:("
        else:
            text = f"###Human: {question}\n###Assistant:"
        return [self.image_token, tok.eos] + tok.encode(text, bos=False)


# --------------------------------------------------------------------------------------------------------------
# ST-LLM's checkpoint: STLLMForCausalLM's state dict (st_llm.py:94-203), converted once to safetensors
#   model.embed_tokens / model.layers.* / model.norm / lm_head      Vicuna-7B v1.1, vocabulary 32001 ([PAD])
#   model.stllm_model.visual_encoder.*                             EVA ViT-g (LAVIS names) + BTAdapter_*
#   model.stllm_model.ln_vision.*                                  the tower's last norm
#   model.stllm_model.Qformer.bert.*, .query_tokens                InstructBLIP's Q-Former (LAVIS names)
#   model.stllm_model.llama_proj.*                                 the projector
#   model.stllm_model.mvm_decoder.*                                training only (masked video modelling): skipped
#   model.stllm_model.embed_tokens.weight                          the same tensor as model.embed_tokens: skipped

LAVIS_RULES = [
    (r"visual_encoder\.patch_embed\.proj\.", "vision.vit.patch."),
    (r"visual_encoder\.cls_token$", "vision.vit.cls_stored"),
    (r"visual_encoder\.pos_embed$", "vision.vit.pos_stored"),
    *lavis_block_rules(r"visual_encoder\.blocks\.(\d+)", r"vision.vit.layers.\1"),
    (r"visual_encoder\.BTAdapter_cls$", "vision.adapter.cls_stored"),
    (r"visual_encoder\.BTAdapter_position\.", "vision.adapter.time."),
    (r"visual_encoder\.BTAdapter_T\.(\d+)\.norm1\.", r"vision.adapter.temporal.\1.norm1."),
    (r"visual_encoder\.BTAdapter_T\.(\d+)\.attn\.qkv\.weight$", r"vision.adapter.temporal.\1.attn.qkv.weight"),
    (r"visual_encoder\.BTAdapter_T\.(\d+)\.attn\.([qv])_bias$", r"vision.adapter.temporal.\1.attn.\2_bias"),
    (r"visual_encoder\.BTAdapter_T\.(\d+)\.attn\.proj\.", r"vision.adapter.temporal.\1.attn.proj."),
    (r"visual_encoder\.BTAdapter_T\.(\d+)\.temporal_fc\.", r"vision.adapter.temporal.\1.temporal_fc."),
    *lavis_block_rules(r"visual_encoder\.BTAdapter_S\.(\d+)", r"vision.adapter.spatial.\1"),
    (r"ln_vision\.", "vision.vit.norm."),
    (r"query_tokens$", "qformer.query_stored"),
    (r"llama_proj\.", "projector."),
] + [(p.replace("QF", r"Qformer\.bert\."), r) for p, r in QFORMER_RULES]
SKIPPED = (r"mvm_decoder\..*", r"embed_tokens\.weight", r"Qformer\.bert\.embeddings\.position_ids",
           r"visual_encoder\.(rel_pos_bias|head|fc_norm|norm)\..*")


def stllm_to_ours(name: str):
    """An ST-LLM tensor name -> our parameter name; "" for what is deliberately skipped; None if unknown."""
    import re


    if name.startswith("model.stllm_model."):
        rest = name[len("model.stllm_model."):]
        if any(re.fullmatch(p, rest) for p in SKIPPED):
            return ""
        return checkpoint.apply_rules(rest, LAVIS_RULES)
    if checkpoint.DERIVED.fullmatch(name):
        return ""
    ours = checkpoint.hf_to_ours(name)  # model.layers.* etc., LlamaForCausalLM's names
    return None if ours is None else "llm." + ours


def from_config(hf: dict) -> STLLM:
    """ST-LLM's config.json is Vicuna's LlamaConfig (model_type "st_llm_hf"): the vision side's sizes are not in
    it; they are ST-LLM's (EVA ViT-g 224 px, InstructBLIP's BERT-base Q-Former, 32 queries, BT-Adapter depth 3).
    "vision_config", "qformer_config", "num_query_tokens", "btadapter_depth", "num_frames" and
    "video_token_index", where a config.json has them, override these (the tiny test checkpoints do)."""
    text = {k: v for k, v in hf.items() if not isinstance(v, dict)}
    text["model_type"] = "llama"
    vision = EvaConfig.from_hf(hf.get("vision_config", {}))
    q = QFormerConfig.from_hf(hf.get("qformer_config", {}), n_query=hf.get("num_query_tokens", 32),
                              vision_dim=vision.dim)
    tower = STLLMTower(vision, depth=hf.get("btadapter_depth", 3))
    # the placeholder never reaches the embedding: -1 unless the config names one
    model = STLLM(config_from_hf(text), tower, q, image_token=hf.get("video_token_index", -1),
                  frames=hf.get("num_frames", 16), arrangement="st-llm")
    model.max_txt_len = 256  # config/instructblipbase_stllm_qa.yaml:5
    return model


def qkv_bias_stages(model: STLLM) -> list:
    """LAVIS stores q_bias and v_bias beside a bias-free qkv; ours is one (3 Cv,) bias with k's part zero."""
    stages = []
    for name, module in model.named_modules():
        if isinstance(module, EvaAttention):
            C = module.proj.weight.shape[0]
            stages.append(([f"{name}.qkv.bias"], {f"{name}.q_bias": (C,), f"{name}.v_bias": (C,)},
                           lambda got, name=name: [torch.cat([got[f"{name}.q_bias"], torch.zeros_like(
                               got[f"{name}.q_bias"]), got[f"{name}.v_bias"]])]))
    return stages


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> STLLM:
    """An ST-LLM directory (its released weights converted to safetensors, docs/checkpoints.md) -> STLLM."""
    from pathlib import Path

    
    path, hf, files, index = checkpoint.open_checkpoint(path)
    checkpoint.no_lora(path, hf, lora_alpha)
    model = checkpoint.build_on_meta(path, lambda: from_config(hf), "ST-LLM")
    stages = squeezed(model, ("qformer.query", "vision.vit.cls", "vision.vit.pos", "vision.adapter.cls"))
    info = checkpoint.load_staged(model, files, stllm_to_ours, dtype, device, index, progress,
                               stages + qkv_bias_stages(model))
    if model.llm.cfg.tie_embeddings:
        model.llm.output.weight = model.llm.embed.weight
    if (Path(path) / "qformer_tokenizer" / "vocab.txt").is_file():
        model.wordpiece = WordPiece.from_dir(path)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()
