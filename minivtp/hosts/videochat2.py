"""VideoChat2 (Li et al. 2024, OpenGVLab/Ask-Anything `video_chat2`, the Vicuna-7B v0 model of MVBench's
paper): UMT-L over the whole clip, a Q-Former with 32 + 64 queries over all its rows, Vicuna with LoRA.

The LLM's prompt on MVBench, rows (`mvbench.ipynb` `infer_mvbench`, the `answer` / `get_context_emb` cells):

    prompt rows   0 .. start-1          <s> + system + "###Human: <Video>"                       prefix
                  start .. start+95     the clip's 96 query tokens: ONE "frame"        VideoSpan(start, 1, 96)
                  start+96 .. N-1       "</Video>\\n###Human: " system, "Question: ... Options: (A) ...",
                                        "\\nOnly give the best option.\\n###Assistant: Best option:("

The Q-Former reads the system prompt as its instruction on MVBench (`system_q=False`: `encode_img(video,
system)`); minivtp's `answer` gives it the question (our choice; the demo passes a fixed sentence).

What "per frame" means here: nothing survives of the frames after UMT (its attention mixes all T*P patches, the
Q-Former reads them as one image and gives 96 tokens for the whole clip), so LLM-VTP's frame is the clip:
VideoSpan(start, frames=1, tokens_per_frame=96), and "the top ceil(alpha * Nv) per frame" is the top
ceil(alpha * 96) = 10 of the 96 at alpha = 0.1, ranked together, as FastV ranks a whole video.

Checkpoint layout (VideoChat2_it_vicuna's state dict, `models/videochat_vicuna/videochat2_it_vicuna.py:53-166`):
    vision_encoder.encoder.patch_embed.proj.*, vision_encoder.encoder.blocks.N.*      UMT-L (umt.py)
    vision_layernorm.*                                                                 its output norm
    qformer.bert.*, query_tokens (1, 32, 768), extra_query_tokens (1, 64, 768)         the Q-Former
    llama_proj.*                                                                       the projector
    llama_model.base_model.model.{model.*, lm_head.*}                                  Vicuna-7B v0, PEFT-wrapped
    ... .lora_A / .lora_B on q_proj and v_proj (PEFT's default for LLaMA), r 16, lora_alpha 32
        (scripts/videochat_vicuna/config_7b_stage3.py:79-82): merged at load time, W + (32/16) B A
The released files are three: umt_l16_qformer.pth (tower and Q-Former), Vicuna-7B v0 (an HF directory) and
videochat2_7b_stage3.pth (what stage 3 trained), loaded in that order with strict=False. minivtp takes one
directory with all of them in one safetensors state dict (docs/checkpoints.md says how to make it).
"""

import torch

from minivtp import checkpoint
from minivtp.hf_config import config_from_hf
from minivtp.hosts import llava
from minivtp.hosts.instructblip import QFORMER_RULES, QFormerVideoLLM, lavis_block_rules
from minivtp.hosts.qformer import QFormerConfig, WordPiece
from minivtp.hosts.umt import UMT, UMTConfig

SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the detail and movement "
          "of objects, and the action and pose of persons. Based on your observations, select the best option that "
          "accurately addresses the question.\n")


class VideoChat2(QFormerVideoLLM):
    stop_text = "###"  # its turns' separator, where its generation stops (mvbench.ipynb, `answer`)

    def video_tokens(self, pixels, qformer_ids=None):
        """pixels (T, 3, S, S) -> (96, C): the whole clip as one Q-Former image, and 1 (one "frame")."""
        rows = self.vision(pixels)[None]  # (1, T*P, Cv)
        q = self.qformer(rows.to(self.qformer.query.dtype), qformer_ids)  # (1, Nq, Cq)
        return self.projector(q)[0], 1  # (Nq, C)


    def prompt_ids(self, tok, question: str, mvbench: bool = False) -> list:
        if mvbench:
            after = f"</Video>\n###Human: {SYSTEM}{question}\nOnly give the best option.\n###Assistant: Best option:("
        else:
            after = f"</Video>\n###Human: {question}\n###Assistant:"
        return tok.encode(f"{SYSTEM if mvbench else ''}###Human: <Video>") + [self.image_token] + \
            tok.encode(after, bos=False)

    def qformer_text(self, question: str, mvbench: bool = False) -> str:
        return SYSTEM if mvbench else question


def from_config(hf: dict) -> VideoChat2:
    """config.json: Vicuna's LlamaConfig (model_type "videochat2", our name: VideoChat2 ships none); "umt_config",
    "qformer_config", "num_query_tokens" (32), "extra_num_query_tokens" (64), "num_frames" (16, MVBench's),
    "lora_alpha" (32) and "video_token_index" override VideoChat2's sizes where present."""
    text = {k: v for k, v in hf.items() if not isinstance(v, dict)}
    text["model_type"] = "llama"
    u = hf.get("umt_config", {})
    umt = UMTConfig(**{k: u[k] for k in ("dim", "n_layers", "n_heads", "hidden_dim", "image_size", "patch_size",
                                         "tubelet", "trained_frames") if k in u})
    n_query = hf.get("num_query_tokens", 32) + hf.get("extra_num_query_tokens", 64)
    q = QFormerConfig.from_hf(hf.get("qformer_config", {}), n_query=n_query, vision_dim=umt.dim)
    model = VideoChat2(config_from_hf(text), UMT(umt), q, image_token=hf.get("video_token_index", -1),
                       frames=hf.get("num_frames", 16), arrangement="videochat2")
    model.n_query_parts = (hf.get("num_query_tokens", 32), hf.get("extra_num_query_tokens", 64))
    model.max_txt_len = 512  # scripts/videochat_vicuna/config_7b_stage3.py:16, 42
    return model


LAVIS_RULES = [
    (r"vision_encoder\.encoder\.patch_embed\.proj\.", "vision.patch."),
    *lavis_block_rules(r"vision_encoder\.encoder\.blocks\.(\d+)", r"vision.layers.\1"),
    (r"vision_layernorm\.", "vision.norm."),
    (r"query_tokens$", "qformer.query_main"),
    (r"extra_query_tokens$", "qformer.query_extra"),
    (r"llama_proj\.", "projector."),
] + [(p.replace("QF", r"qformer\.bert\."), r) for p, r in QFORMER_RULES]


def videochat2_to_ours(name: str):
    import re


    if re.fullmatch(r"qformer\.bert\.embeddings\.position_ids", name):
        return ""
    ours = checkpoint.apply_rules(name, LAVIS_RULES)
    if ours is not None:
        return ours
    if name.startswith("llama_model."):
        rest = re.sub(r"^llama_model\.(base_model\.model\.)?", "", name)
        rest = re.sub(r"\.base_layer\.", ".", rest)  # newer PEFT keeps the frozen weight as X.base_layer.weight
        if checkpoint.DERIVED.fullmatch(rest):
            return ""
        ours = checkpoint.hf_to_ours(rest)
        return None if ours is None else "llm." + ours
    return None


def load(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None) -> VideoChat2:
    """A VideoChat2 directory (one safetensors state dict, config.json) -> VideoChat2, LoRA merged."""
    from pathlib import Path

    from minivtp.hosts.stllm import qkv_bias_stages

    path, hf, files, index = checkpoint.open_checkpoint(path)
    model = checkpoint.build_on_meta(path, lambda: from_config(hf), "VideoChat2")
    Cq = model.qformer.cfg.dim
    main, extra = model.n_query_parts
    queries = (["qformer.query"], {"qformer.query_main": (1, main, Cq), "qformer.query_extra": (1, extra, Cq)},
               lambda got: [torch.cat([got["qformer.query_main"][0], got["qformer.query_extra"][0]])])  # (96, Cq)
    lora, current = {}, {}

    def rename(name):
        m = llava.LORA.fullmatch(name)
        if m:
            target = videochat2_to_ours(m.group(1) + ".weight")
            if target is None:
                raise checkpoint.CheckpointError(f"{current['file'].name}: LoRA tensor {name} adapts nothing here")
            lora.setdefault(target, {})[m.group(2)] = (current["file"], name)
            return ""
        return videochat2_to_ours(name)

    def track(i, n, file):
        current["file"] = file
        if progress:
            progress(i, n, file)

    info = checkpoint.load_staged(model, files, rename, dtype, device, index, track,
                               [queries] + qkv_bias_stages(model))
    if model.llm.cfg.tie_embeddings:
        model.llm.output.weight = model.llm.embed.weight
    if lora:  # VideoChat2's stage-3 LoRA: lora_alpha 32 unless config.json or the caller says otherwise
        hf_alpha = dict(hf, lora_alpha=hf.get("lora_alpha", 32))
        info["lora_merged"] = llava.merge_lora(model, lora, path, hf_alpha, lora_alpha, device)
    if (Path(path) / "qformer_tokenizer" / "vocab.txt").is_file():
        model.wordpiece = WordPiece.from_dir(path)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()

