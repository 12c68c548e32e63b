"""The main demo: ask the toy video LLM a question with all tokens and with LLM-VTP, and draw what it kept.

    python -m minivtp.demo                 # no download, no GPU, a few seconds
    python -m minivtp.demo --seed 7 --alpha 0.2 --layer 3 --out demo.png

It prints both answers, how many video tokens LLM-VTP kept, and the prefill FLOPs saved, and writes a PNG:
top row, the video's 8 frames as the objects in them; bottom row, layer M's question-to-video attention
(a_v, Eq. 4 averaged over the question rows) as a heatmap, with the kept tokens outlined in green.
"""

import argparse
import sys
from pathlib import Path

import torch

from minivtp import png, toy
from minivtp.flops import prefill_flops

CELL, GAP, MARGIN = 22, 10, 12
DEFAULT_LAYER = 1  # M for the toy: the layer whose attention finds the answer patch (README, experiments)


def picture(sample, scores, kept, video):
    """(H, W, 3) uint8: objects per frame above, attention heatmap with kept tokens outlined below."""
    fw, fh = toy.COLS * CELL, toy.ROWS * CELL
    W = 2 * MARGIN + toy.T * fw + (toy.T - 1) * GAP
    H = 2 * MARGIN + 2 * fh + GAP
    img = png.canvas(H, W, png.WHITE)
    top = scores.max().item() or 1.0
    kept = set((kept - video.start).tolist())
    for t in range(toy.T):
        x0 = MARGIN + t * (fw + GAP)
        png.fill(img, MARGIN, x0, fh, fw, png.DARK)
        for o in sample.objects:
            if o.frame == t:
                png.draw_shape(img, MARGIN + o.row * CELL, x0 + o.col * CELL, CELL, o.shape, png.PALETTE[o.colour])
        y0 = MARGIN + fh + GAP
        for r in range(toy.ROWS):
            for c in range(toy.COLS):
                j = t * toy.NV + r * toy.COLS + c
                png.fill(img, y0 + r * CELL, x0 + c * CELL, CELL, CELL, png.heat(scores[j].item() / top))
                if j in kept:
                    png.outline(img, y0 + r * CELL, x0 + c * CELL, CELL, CELL, png.GREEN, width=2)
    return img


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp.demo", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=3, help="which video and question")
    p.add_argument("--alpha", type=float, default=0.1, help="fraction of each frame's tokens kept, in (0, 1]")
    p.add_argument("--layer", type=int, default=DEFAULT_LAYER, help="M, the layer whose attention prunes, 1..4")
    p.add_argument("--weights", type=Path, default=toy.ASSETS, help="toy checkpoint directory")
    p.add_argument("--out", type=Path, default=Path("vtp_demo.png"))
    args = p.parse_args(argv)
    try:
        model = toy.load(args.weights)
        sample = toy.make_sample(torch.Generator().manual_seed(args.seed))
        full, _ = toy.ask(model, sample)
        pruned, out = toy.ask(model, sample, alpha=args.alpha, layer=args.layer)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    video = toy.VideoSpan(len(toy.PREFIX), toy.T, toy.NV)
    flops = prefill_flops(model.llm.cfg, len(toy.PREFIX), toy.T, toy.NV, out.prompt_len - video.end,
                          alpha=args.alpha, layer=args.layer)
    print("video:    " + "; ".join(f"{o.colour} {o.shape} in frame {o.frame} at row {o.row}, col {o.col}"
                                   for o in sorted(sample.objects, key=lambda o: o.frame)))
    print(f"question: {' '.join(sample.question)}      (true answer: {sample.answer})")
    print(f"all {toy.T * toy.NV} video tokens:       {full}")
    print(f"LLM-VTP alpha={args.alpha}, M={args.layer}:  {pruned}")
    print(f"kept {out.kept.numel()} of {toy.T * toy.NV} video tokens ({out.kept.numel() / (toy.T * toy.NV):.1%}); "
          f"KV cache {out.cache_len} of {out.prompt_len} rows")
    print(f"prefill FLOPs: {flops['flops_full'] / 1e6:.1f} M -> {flops['flops_pruned'] / 1e6:.1f} M "
          f"({1 - flops['ratio']:.0%} saved)")
    png.write_png(args.out, picture(sample, out.pruning.scores, out.kept, video))
    print(f"wrote {args.out}: frames above, layer {args.layer}'s question-to-video attention below, kept tokens in green")
    return 0


if __name__ == "__main__":
    sys.exit(main())
