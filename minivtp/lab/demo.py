"""The main demo: a question that random pruning gets wrong and LLM-VTP gets right, on the toy video LLM.

    python -m minivtp demo                 # no download, no GPU, a few seconds
    python -m minivtp demo --seed 7 --alpha 0.2 --out demo.png

From --seed on, it looks for a held-out video whose question the model answers right with all tokens and with
LLM-VTP, and wrong when the same number of tokens per frame is kept at random. It prints the three answers,
how many video tokens each pruned run kept, and the prefill FLOPs saved, and writes a PNG: the video's 8 frames
as the objects in them; under them layer M's question-to-video attention (a_v, Eq. 4 averaged over the question
rows) as a heatmap with LLM-VTP's kept tokens outlined in green; under that the random choice, outlined in blue.
"""

import argparse
import sys
from pathlib import Path

import torch

from minivtp.flops import prefill_flops
from minivtp.generate import Method
from minivtp.lab import png, toy

CELL, GAP, MARGIN = 22, 10, 12
SEARCH = 200  # videos looked at before giving up


def picture(sample, scores, kept, random_kept, video):
    """(H, W, 3) uint8: objects per frame; attention with LLM-VTP's kept tokens; the random kept tokens."""
    fw, fh = toy.COLS * CELL, toy.ROWS * CELL
    W = 2 * MARGIN + toy.T * fw + (toy.T - 1) * GAP
    H = 2 * MARGIN + 3 * fh + 2 * GAP
    img = png.canvas(H, W, png.WHITE)
    top = scores.max().item() or 1.0
    kept, random_kept = set((kept - video.start).tolist()), set((random_kept - video.start).tolist())
    for t in range(toy.T):
        x0 = MARGIN + t * (fw + GAP)
        png.fill(img, MARGIN, x0, fh, fw, png.DARK)
        png.fill(img, MARGIN + 2 * (fh + GAP), x0, fh, fw, png.DARK)
        for o in sample.objects:
            if o.frame == t:
                png.draw_shape(img, MARGIN + o.row * CELL, x0 + o.col * CELL, CELL, o.shape, png.PALETTE[o.colour])
                png.draw_shape(img, MARGIN + 2 * (fh + GAP) + o.row * CELL, x0 + o.col * CELL, CELL, o.shape,
                               png.PALETTE[o.colour])
        y0, y1 = MARGIN + fh + GAP, MARGIN + 2 * (fh + GAP)
        for r in range(toy.ROWS):
            for c in range(toy.COLS):
                j = t * toy.NV + r * toy.COLS + c
                png.fill(img, y0 + r * CELL, x0 + c * CELL, CELL, CELL, png.heat(scores[j].item() / top))
                if j in kept:
                    png.outline(img, y0 + r * CELL, x0 + c * CELL, CELL, CELL, png.GREEN, width=2)
                if j in random_kept:
                    png.outline(img, y1 + r * CELL, x0 + c * CELL, CELL, CELL, png.PALETTE["blue"], width=2)
    return img


def find_example(model, seed: int, alpha: float, layer: int):
    """The first seed from `seed` on whose sample is right with all tokens and LLM-VTP, wrong with random."""
    for s in range(seed, seed + SEARCH):
        sample = toy.make_sample(torch.Generator().manual_seed(s))
        full, _ = toy.ask(model, sample)
        ours, out = toy.ask(model, sample, method=Method(alpha=alpha, layer=layer))
        rand, rout = toy.ask(model, sample, method=Method("random", alpha=alpha, layer=layer), seed=s)
        if toy.is_right(sample, full) and toy.is_right(sample, ours) and not toy.is_right(sample, rand):
            return s, sample, (full, ours, rand), out, rout
    raise ValueError(f"no video among seeds {seed}..{seed + SEARCH - 1} that random pruning gets wrong and "
                     f"LLM-VTP right at alpha={alpha}, M={layer}: try another --seed, --alpha or --layer")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp demo", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=3, help="where to start looking for a video")
    p.add_argument("--alpha", type=float, default=0.1, help="fraction of each frame's tokens kept, in (0, 1]")
    p.add_argument("--layer", type=int, default=toy.DEFAULT_LAYER, help="M, the layer whose attention prunes, 1..4")
    p.add_argument("--weights", type=Path, default=toy.ASSETS, help="toy checkpoint directory")
    p.add_argument("--out", type=Path, default=Path("vtp_demo.png"))
    args = p.parse_args(argv)
    try:
        model = toy.load(args.weights)
        Method(alpha=args.alpha, layer=args.layer).resolved(model.llm.cfg.n_layers)  # one line for a bad value
        seed, sample, (full, ours, rand), out, rout = find_example(model, args.seed, args.alpha, args.layer)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    video = toy.VideoSpan(len(toy.PREFIX), toy.T, toy.NV)
    flops = prefill_flops(model.llm.cfg, len(toy.PREFIX), toy.T, toy.NV, out.prompt_len - video.end,
                          alpha=args.alpha, layer=args.layer)
    verdict = lambda words: "right" if toy.is_right(sample, words) else "wrong"  # noqa: E731
    print(f"video (seed {seed}): " + "; ".join(f"{o.colour} {o.shape} in frame {o.frame} at row {o.row}, col {o.col}"
                                               for o in sorted(sample.objects, key=lambda o: o.frame)))
    print(f"question: {' '.join(sample.question)}")
    print(f"all {toy.T * toy.NV} video tokens:            {' '.join(full):18s} {verdict(full)}")
    print(f"LLM-VTP alpha={args.alpha}, M={args.layer}:        {' '.join(ours):18s} {verdict(ours)}")
    print(f"random, same count per frame:  {' '.join(rand):18s} {verdict(rand)}")
    print(f"each kept {out.kept.numel()} of {toy.T * toy.NV} video tokens ({out.kept.numel() / (toy.T * toy.NV):.1%}); "
          f"KV cache {out.cache_len} of {out.prompt_len} rows")
    print(f"prefill FLOPs: {flops['flops_full'] / 1e6:.1f} M -> {flops['flops_pruned'] / 1e6:.1f} M "
          f"({1 - flops['ratio']:.0%} saved)")
    png.write_png(args.out, picture(sample, out.pruning.scores, out.kept, rout.kept, video))
    print(f"wrote {args.out}: frames at the top; layer {args.layer}'s question-to-video attention with LLM-VTP's "
          "kept tokens in green; the random choice in blue at the bottom")
    return 0


if __name__ == "__main__":
    sys.exit(main())
