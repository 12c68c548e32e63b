"""How many floating-point operations prefill costs, with and without LLM-VTP (or a rival). Counted, not measured.

    python -m minivtp flops --preset pllava-7b --alpha 0.2 --layer 5 --json
    python -m minivtp flops --preset pllava-7b --method prumerge+ --keep 0.365
    python -m minivtp flops --preset llava-ov-7b --alpha 0.1 --layer 10      # LLaVA-OneVision-7B; llava-video-7b
    python -m minivtp flops --preset qwen2.5-vl-7b --alpha 0.1 --layer 10    # Qwen2.5-VL-7B; qwen3-vl-8b

A multiply-add is 2 FLOPs. Per decoder layer, for n rows that attend to n rows:

    projections   2 n C (H D + 2 Hkv D) + 2 n (H D) C          q, k, v, o
    MLP           3 * 2 n C F                                   gate, up, down
    attention     2 n n H D  +  2 n n H D                       Q K^T, then A V (the full square, as dense
                                                                 kernels and most FLOP counters count it)

Layers 1..M see all N prompt rows; layers M+1..L see prefix + kept + question rows. Scoring at layer M adds
the question rows' queries and one (Nq x N) score matrix per head (the fast path); the logits of the last row
come once. Embedding lookups,
norms, RoPE and softmax are left out: they are O(n C), noise beside the matrix products.
"""

import argparse
import json
import sys
from dataclasses import asdict, replace

from minivtp.model import Config
from minivtp.vtp import VideoSpan, n_keep

VICUNA_7B = Config(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008)
# Qwen2-7B(-Instruct)'s config.json: 28 layers, 28 query heads, 4 key/value heads (GQA), 18944 MLP, theta 1e6.
# llava-hf's conversion adds <image> and <video> and pads the vocabulary to a multiple of 64: 152064 -> 152128.
QWEN2_7B = Config(vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, hidden_dim=18944,
                  norm_eps=1e-6, rope_theta=1e6, max_seq_len=32768, qkv_bias=True)
QWEN2_7B_OV = replace(QWEN2_7B, vocab_size=152128)
# Qwen/Qwen2.5-VL-7B-Instruct's config.json: Qwen2-7B's decoder shapes, M-RoPE sections [16, 24, 24]
QWEN25_VL_7B = replace(QWEN2_7B, max_seq_len=128000, mrope_section=(16, 24, 24))
# Qwen/Qwen3-VL-8B-Instruct's text_config: 36 layers, 32 query heads, 8 key/value heads of 128, MLP 12288, theta
# 5e6, per-head q/k norms, interleaved M-RoPE [24, 20, 20]
QWEN3_VL_8B = Config(vocab_size=151936, dim=4096, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128,
                     hidden_dim=12288, norm_eps=1e-6, rope_theta=5e6, max_seq_len=262144, qk_norm=True,
                     mrope_section=(24, 20, 20), mrope_layout="interleaved")

# Host models built on Vicuna-7B, with the token counts of the paper's setting. prefix = system prompt rows
# before the video, question = every row after it (question, options, "ASSISTANT:"). The text lengths are
# typical, not the paper's (it does not give them); docs/checkpoints.md says where the video counts come from.
PRESETS = {
    # PLLaVA-7B: 16 frames, CLIP features pooled to 12 x 12 per frame
    "pllava-7b": dict(cfg=VICUNA_7B, prefix=35, frames=16, tokens_per_frame=144, question=60),
    # Tarsier-7B: 8 frames of 24 x 24 CLIP patches, plus one newline token per row and one frame separator
    "tarsier-7b": dict(cfg=VICUNA_7B, prefix=5, frames=8, tokens_per_frame=24 * 24 + 24 + 1, question=60),
    # LLaVA-OneVision-7B (llava-hf/llava-onevision-qwen2-7b-ov-hf): Qwen2-7B, 32 frames of 27 x 27 SigLIP patches
    # bilinearly resized to 14 x 14; the one newline row after the video counts with the question. prefix: the
    # qwen_1_5 template's "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n", about
    # 14 tokens (its pieces counted by hand; Qwen2's tokenizer, once minivtp reads it, gives the exact number)
    "llava-ov-7b": dict(cfg=QWEN2_7B_OV, prefix=14, frames=32, tokens_per_frame=14 * 14, question=60 + 1),
    # LLaVA-Video-7B-Qwen2 (lmms-lab): the same decoder, 64 frames average-pooled to 13 x 13, a newline after every
    # row inside each frame (mm_newline_position "grid"): 13 * 14 rows a frame
    "llava-video-7b": dict(cfg=QWEN2_7B, prefix=14, frames=64, tokens_per_frame=13 * 14, question=60),
    # Tab. 8's Q-Former hosts (minivtp/hosts/). ST-LLM: 16 frames of 32 query tokens first, no rows before them;
    # after them </s>, "###Human: ", the same 35-row system prompt as PLLaVA's, then the 60 question rows
    # (Vicuna-7B v1.1 with ST-LLM's [PAD] added: 32001 tokens)
    "st-llm": dict(cfg=replace(VICUNA_7B, vocab_size=32001), prefix=0, frames=16, tokens_per_frame=32,
                   question=1 + 4 + 35 + 60),
    # VideoChat2 (Vicuna-7B v0): its Q-Former reads all 16 frames at once and gives 32 + 64 query tokens for the
    # whole clip, so the video is ONE "frame" of 96 (LLM-VTP keeps ceil(alpha * 96) of it); before it <s>, the
    # system prompt and "###Human: <Video>", after it "</Video>\n###Human: ", the system prompt again and the
    # question
    "videochat2": dict(cfg=VICUNA_7B, prefix=1 + 35 + 8, frames=1, tokens_per_frame=96, question=8 + 35 + 60),
    # Qwen2.5-VL-7B (minivtp/hosts/qwen2_5_vl.py): 32 frames at 448 x 448, as the 2025 pruning papers run it (FastVID,
    # FlashVID, VidCom2 use 32 or more); 2 frames a temporal group, 32 x 32 patches merged 2 x 2: 16 "frames" of
    # 16 x 16 = 256 tokens. prefix: the chat template's system turn, "<|im_start|>user\n<|vision_start|>" (about 15)
    "qwen2.5-vl-7b": dict(cfg=QWEN25_VL_7B, prefix=15, frames=16, tokens_per_frame=16 * 16, question=60),
    # Qwen3-VL-8B: 32 frames at 512 x 512, 16 x 16 patches merged 2 x 2: 16 groups of 16 x 16 = 256 tokens. Its
    # prompt puts "<t seconds>" and the vision markers before each group (about 7 rows each): those rows are never
    # pruned, so they are counted with the prefix (FLOPs do not depend on where kept rows sit). DeepStack's adds are
    # O(n C) and left out with the norms.
    "qwen3-vl-8b": dict(cfg=QWEN3_VL_8B, prefix=4 + 16 * 7, frames=16, tokens_per_frame=16 * 16, question=60),
}
# Tab. 8 (alpha 0.1, M 10): ST-LLM 5.4 -> 2.1 TFLOPs, VideoChat2 1.1 -> 0.5
PAPER_TAB8 = {"st-llm": (5.4, 2.1), "videochat2": (1.1, 0.5)}
QFORMER_PRESETS = tuple(PAPER_TAB8)


SIGLIP_PRESETS = ("llava-ov-7b", "llava-video-7b", "qwen2.5-vl-7b", "qwen3-vl-8b")  # no class token: no PruMerge+


def layer_flops(cfg: Config, n: int) -> int:
    C, F, H, Hkv, D = cfg.dim, cfg.hidden_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    proj = 2 * n * C * (H * D + 2 * Hkv * D) + 2 * n * (H * D) * C
    mlp = 3 * 2 * n * C * F
    attn = 2 * n * n * H * D * 2
    return proj + mlp + attn


METHODS = ("llm-vtp", "fastv", "prumerge+", "look-m")
PRUMERGE_PLLAVA_KEEP = 0.365  # the fraction of PLLaVA's video tokens PruMerge+ kept on average (Tab. 1)


def scoring_flops(cfg: Config, rows: int, N: int) -> int:
    """Queries for `rows` rows once more, then their scores against N keys (softmax not counted)."""
    HD = cfg.n_heads * cfg.head_dim
    return 2 * rows * cfg.dim * HD + 2 * rows * N * HD


def prefill_flops(cfg: Config, prefix: int, frames: int, tokens_per_frame: int, question: int, alpha: float = 1.0,
                  layer: int = None, ranking: str = "frame", method: str = "llm-vtp", keep: float = None,
                  recent: float = 0.05, important: float = 0.05) -> dict:
    """FLOPs of one prefill, unpruned and pruned by `method`:

    llm-vtp    layers 1..M on N rows, M+1..L on prefix + T * ceil(alpha * Nv) + question; the question rows score
    fastv      layers 1..K on N rows, K+1..L on prefix + ceil(alpha * T * Nv) + question; the last row scores
    prumerge+  every layer on prefix + round(keep * T * Nv) + question (the vision tower pruned before; its own
               cost, as the LLM's embedding lookups, is outside this count)
    look-m     every layer on N rows: eviction happens after prefill, from the attention prefill computes anyway;
               then per layer the cosine similarity of every evicted key to every kept key (the merge)
               (`look_m_scoring`: what minivtp's Look-M adds by recomputing Q K^T beside the fused kernel)
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(map(repr, METHODS))}")
    video = VideoSpan(prefix, frames, tokens_per_frame)
    N = video.end + question
    video.check(N)
    layer = cfg.n_layers if layer is None else layer
    if not 1 <= layer <= cfg.n_layers:
        raise ValueError(f"layer={layer} is outside 1..{cfg.n_layers}")
    n_video = frames * tokens_per_frame
    head = 2 * cfg.dim * cfg.vocab_size  # logits of the last row
    full = cfg.n_layers * layer_flops(cfg, N) + head
    out = dict(method=method, prompt_rows=N, video_rows=n_video, flops_full=full)
    if method in ("llm-vtp", "fastv"):
        if method == "llm-vtp":
            kept = frames * n_keep(alpha, tokens_per_frame) if ranking == "frame" else n_keep(alpha, n_video)
            scoring = scoring_flops(cfg, question, N)
        else:
            kept, scoring = n_keep(alpha, n_video), scoring_flops(cfg, 1, N)
        n_after = prefix + kept + question
        pruned = layer * layer_flops(cfg, N) + (cfg.n_layers - layer) * layer_flops(cfg, n_after) + scoring + head
        out.update(layer=layer, alpha=alpha)
    elif method == "prumerge+":
        keep = PRUMERGE_PLLAVA_KEEP if keep is None else keep
        if not 0 < keep <= 1:
            raise ValueError(f"keep={keep} is outside (0, 1]: the fraction of video tokens PruMerge+ retained")
        kept = round(keep * n_video)
        n_after = prefix + kept + question
        pruned = cfg.n_layers * layer_flops(cfg, n_after) + head
        out.update(keep=keep)
    else:
        n_kept = min(N, int(N * recent) + int(N * important))  # rows each layer's cache keeps
        merge = cfg.n_layers * 2 * cfg.n_kv_heads * (N - n_kept) * n_kept * cfg.head_dim
        kept, n_after, pruned = n_video, N, full + merge
        out.update(recent=recent, important=important, cache_rows=n_kept,
                   look_m_scoring=cfg.n_layers * scoring_flops(cfg, N, N))
    out.update(kept_video_rows=kept, rows_after_pruning=n_after, flops_pruned=pruned, ratio=pruned / full,
               speedup=full / pruned)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp flops", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="pllava-7b")
    p.add_argument("--alpha", type=float, default=0.1, help="fraction of video tokens kept, in (0, 1]")
    p.add_argument("--layer", type=int, default=10, help="M, the layer that prunes, 1..L")
    p.add_argument("--ranking", choices=("frame", "sequence"), default="frame")
    p.add_argument("--method", choices=METHODS, default="llm-vtp")
    p.add_argument("--keep", type=float, help=f"PruMerge+'s retained fraction (default {PRUMERGE_PLLAVA_KEEP})")
    p.add_argument("--frames", type=int, help="override the preset's frame count T")
    p.add_argument("--question", type=int, help="override the preset's question rows Nq")
    p.add_argument("--prefix", type=int, help="override the preset's rows before the video")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    cfg = preset.pop("cfg")
    if args.method == "prumerge+" and args.preset in SIGLIP_PRESETS:
        print(f"error: PruMerge+ ranks patches by their attention to CLIP's class token; {args.preset}'s vision "
              "tower has none", file=sys.stderr)
        return 2
    if args.frames:
        preset["frames"] = args.frames
    if args.question:
        preset["question"] = args.question
    if args.prefix is not None:
        preset["prefix"] = args.prefix
    if args.method == "prumerge+" and args.preset in QFORMER_PRESETS:
        print(f"error: PruMerge+ does not apply to {args.preset}: its LLM reads the Q-Former's query tokens, none of "
              "which is a [CLS] to rank by (paper, Tab. 8)", file=sys.stderr)
        return 2
    try:
        out = prefill_flops(cfg, **preset, alpha=args.alpha, layer=args.layer, ranking=args.ranking,
                            method=args.method, keep=args.keep)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = dict(preset=args.preset, **out, config=asdict(cfg))
    if args.json:
        print(json.dumps(out))
    else:
        how = {"llm-vtp": f"alpha={args.alpha}, M={args.layer}", "fastv": f"alpha={args.alpha}, K={args.layer}",
               "prumerge+": f"keep={out.get('keep')}", "look-m": "prefill unpruned"}[args.method]
        print(f"{args.preset}, {args.method}: {out['prompt_rows']} prompt rows ({out['video_rows']} video), "
              f"{how}: the LLM's layers after pruning see {out['kept_video_rows']} video rows")
        print(f"prefill FLOPs  full {out['flops_full'] / 1e12:.2f} T   pruned {out['flops_pruned'] / 1e12:.2f} T   "
              f"ratio {out['ratio']:.3f}  ({out['speedup']:.2f}x fewer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
