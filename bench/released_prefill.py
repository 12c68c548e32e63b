"""Prefill time of LLM-VTP's two rules at PLLaVA-7B shape: the paper's, and the authors' released code's.

    python -m bench.released_prefill --out DIR     # a GPU, PLLaVA-7B shape, bf16: DIR/released_prefill.json
    python -m bench.released_prefill --tiny        # the same measurement at a small shape (the CPU without a GPU)

The released rule (Method(variant="released"), vtp.VARIANTS) scores layer M's video tokens with q and k before
RoPE and no causal mask: the keys are projected a second time from the layer's input (the cache holds them with
RoPE), and every question row's softmax runs over all N keys. It also keeps int(alpha * Nv) a frame instead of
ceil(alpha * Nv), so fewer rows go on to layers M+1..L. "released, ceil count" separates the two: the paper's
rows, only the scoring differs. Two measurements per setting: the whole prefill (common.prefill_ms, the readable
loop), and the scoring at layer M alone (vtp.scores_fast and scores_literal on the layer's input and cache).
Random weights (speed does not depend on their values); medians after warm-up, CUDA events on a GPU. Prints one
line per setting with its ratio to the paper's rule, measured in this run.
"""

import argparse
import sys
from pathlib import Path

import torch

from bench import common
from minivtp import vtp
from minivtp.generate import Method, prefill

RULES = {"paper": dict(variant="paper"), "released": dict(variant="released"),
         "released, ceil count": dict(variant="released", count="ceil")}
SETTINGS = ((0.1, 10), (0.2, 10), (0.2, 5))  # (alpha, M): the paper's PLLaVA settings (Sec. 4.3)


@torch.no_grad()
def scoring_ms(model, embeds, video, method, scores, reps):
    """Median ms of layer M's scoring alone (the step the rules differ in), on the layer's input and cache."""
    m = method.resolved(model.cfg.n_layers)
    N = embeds.shape[1]
    pos = torch.arange(N, device=embeds.device)
    cos, sin = model.rope(pos)
    caches = model.new_caches(1, N)
    x_in = model.forward_layers(embeds, cos, sin, pos, caches, stop=m.layer - 1)  # layers 1..M-1
    model.forward_layers(x_in, cos, sin, pos, caches, start=m.layer - 1, stop=m.layer)  # layer M fills its cache
    block, cache = model.layers[m.layer - 1], caches[m.layer - 1]
    score = vtp.scores_fast if scores == "fast" else vtp.scores_literal
    return common.median_ms(lambda: score(block, x_in, cos, sin, pos, cache, video, m.head_pool, m.rope, m.causal,
                                          m.question_pool), embeds.device, reps=reps)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.released_prefill", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a small shape (on the CPU when there is no GPU)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="write released_prefill.json here")
    args = p.parse_args(argv)
    s = common.shape(tiny=args.tiny)
    model = common.random_llm(s)
    embeds, video = common.random_embeds(s, s.rows), s.video
    res = dict(common.machine(), shape="tiny" if s.tiny else "pllava-7b", rows=s.rows, frames=s.frames, nv=s.nv,
               runs={})
    print(f"{res['device']}, {s.dtype}, {res['shape']} shape: N = {s.rows} ({s.frames} x {s.nv} video rows)")
    for alpha, M in SETTINGS:
        for rule, switches in RULES.items():
            method = Method(alpha=alpha, layer=M, **switches)
            ms, _ = common.prefill_ms(model, embeds, video, method, reps=args.reps)
            with torch.no_grad():  # what the rule kept, from one prefill of its own
                kept = prefill(model, embeds, model.new_caches(1, s.rows), video, method)[1].kept.numel()
            row = dict(prefill_ms=ms, kept=kept, scoring_ms={sc: scoring_ms(model, embeds, video, method, sc,
                                                                             args.reps) for sc in ("fast", "literal")})
            res["runs"][f"a{alpha} M{M} {rule}"] = row
            base = res["runs"][f"a{alpha} M{M} paper"]
            print(f"alpha {alpha} M {M:2d}  {rule:20s}  prefill {ms:9.2f} ms ({ms / base['prefill_ms']:5.3f}x the "
                  f"paper's)  scoring at M: fast {row['scoring_ms']['fast']:8.3f} ms "
                  f"({row['scoring_ms']['fast'] / base['scoring_ms']['fast']:5.2f}x), literal "
                  f"{row['scoring_ms']['literal']:8.3f} ms  kept {kept} video tokens", flush=True)
            if args.out:
                common.write_json(args.out, "released_prefill.json", res)
    if args.out:
        print(f"wrote {args.out / 'released_prefill.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
