"""How many floating-point operations prefill costs, with and without LLM-VTP. Counted, not measured.

    python -m minivtp.flops --preset pllava-7b --alpha 0.2 --layer 5 --json

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
from dataclasses import asdict

from minivtp.model import Config
from minivtp.vtp import VideoSpan, n_keep

VICUNA_7B = Config(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008)

# Host models built on Vicuna-7B, with the token counts of the paper's setting. prefix = system prompt rows
# before the video, question = every row after it (question, options, "ASSISTANT:"). The text lengths are
# typical, not the paper's (it does not give them); docs/checkpoints.md says where the video counts come from.
PRESETS = {
    # PLLaVA-7B: 16 frames, CLIP features pooled to 12 x 12 per frame
    "pllava-7b": dict(cfg=VICUNA_7B, prefix=35, frames=16, tokens_per_frame=144, question=60),
    # Tarsier-7B: 8 frames of 24 x 24 CLIP patches, plus one newline token per row and one frame separator
    "tarsier-7b": dict(cfg=VICUNA_7B, prefix=5, frames=8, tokens_per_frame=24 * 24 + 24 + 1, question=60),
}


def layer_flops(cfg: Config, n: int) -> int:
    C, F, H, Hkv, D = cfg.dim, cfg.hidden_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    proj = 2 * n * C * (H * D + 2 * Hkv * D) + 2 * n * (H * D) * C
    mlp = 3 * 2 * n * C * F
    attn = 2 * n * n * H * D * 2
    return proj + mlp + attn


def prefill_flops(cfg: Config, prefix: int, frames: int, tokens_per_frame: int, question: int, alpha: float = 1.0,
                  layer: int = None, ranking: str = "frame") -> dict:
    """FLOPs of one prefill, unpruned and with LLM-VTP at layer `layer` keeping `alpha` of the video."""
    video = VideoSpan(prefix, frames, tokens_per_frame)
    N = video.end + question
    video.check(N)
    layer = cfg.n_layers if layer is None else layer
    if not 1 <= layer <= cfg.n_layers:
        raise ValueError(f"layer={layer} is outside 1..{cfg.n_layers}")
    n_video = frames * tokens_per_frame
    kept = frames * n_keep(alpha, tokens_per_frame) if ranking == "frame" else n_keep(alpha, n_video)
    n_after = prefix + kept + question
    head = 2 * cfg.dim * cfg.vocab_size  # logits of the last row
    full = cfg.n_layers * layer_flops(cfg, N) + head
    # scoring at layer M (the fast path): the question rows' queries once more, then Q_q K^T (softmax not counted)
    scoring = 2 * question * cfg.dim * cfg.n_heads * cfg.head_dim + 2 * question * N * cfg.n_heads * cfg.head_dim
    pruned = layer * layer_flops(cfg, N) + (cfg.n_layers - layer) * layer_flops(cfg, n_after) + scoring + head
    return dict(prompt_rows=N, video_rows=n_video, kept_video_rows=kept, rows_after_pruning=n_after,
                layer=layer, alpha=alpha, flops_full=full, flops_pruned=pruned, ratio=pruned / full,
                speedup=full / pruned)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp.flops", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="pllava-7b")
    p.add_argument("--alpha", type=float, default=0.1, help="fraction of video tokens kept, in (0, 1]")
    p.add_argument("--layer", type=int, default=10, help="M, the layer that prunes, 1..L")
    p.add_argument("--ranking", choices=("frame", "sequence"), default="frame")
    p.add_argument("--frames", type=int, help="override the preset's frame count T")
    p.add_argument("--question", type=int, help="override the preset's question rows Nq")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    cfg = preset.pop("cfg")
    if args.frames:
        preset["frames"] = args.frames
    if args.question:
        preset["question"] = args.question
    try:
        out = prefill_flops(cfg, **preset, alpha=args.alpha, layer=args.layer, ranking=args.ranking)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = dict(preset=args.preset, **out, config=asdict(cfg))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.preset}: {out['prompt_rows']} prompt rows ({out['video_rows']} video), "
              f"alpha={args.alpha}, M={args.layer}: keeps {out['kept_video_rows']} video rows")
        print(f"prefill FLOPs  full {out['flops_full'] / 1e12:.2f} T   pruned {out['flops_pruned'] / 1e12:.2f} T   "
              f"ratio {out['ratio']:.3f}  ({out['speedup']:.2f}x fewer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
