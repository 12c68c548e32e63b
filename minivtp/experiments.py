"""The paper's ablations, on the toy video LLM: does the LLM's own attention pick the tokens that matter?

    python -m minivtp.experiments                      # ~2 minutes on 2 CPU cores; table + accuracy_vs_alpha.png
    python -m minivtp.experiments --n 100 --json       # quicker, machine-readable

On held-out questions: accuracy with all tokens, with LLM-VTP, with random tokens (same count per frame) and
with the complement (every token LLM-VTP drops, Tab. 10), for alpha in {0.05, 0.1, 0.2, 0.5} and every M;
then per-frame vs whole-sequence ranking (Tab. 5) and max vs mean vs min head pooling (Tab. 6).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from minivtp import png, toy

ALPHAS = (0.05, 0.1, 0.2, 0.5)
METHODS = ("llm-vtp", "random", "complement")
SELECTION = {"llm-vtp": "attention", "random": "random", "complement": "complement"}


def evaluate(model, samples, **kw):
    """Fraction of samples answered right; kw goes to generate (alpha=None: all tokens)."""
    return measure(model, samples, **kw)[0]


def measure(model, samples, **kw):
    """(accuracy, recall): recall is the fraction of questions whose answer patch is among the kept tokens."""
    right = hit = 0
    for s in samples:
        answer, out = toy.ask(model, s, **kw)
        right += answer == s.answer
        target = s.objects[0]
        where = len(toy.PREFIX) + target.frame * toy.NV + target.row * toy.COLS + target.col
        hit += where in set(out.kept.tolist()) if "alpha" in kw else 1
    return right / len(samples), hit / len(samples)


def run(model, n=300, seed=2024, progress=print):
    g = torch.Generator().manual_seed(seed)
    samples = [toy.make_sample(g) for _ in range(n)]
    L = model.llm.cfg.n_layers
    res = dict(n=n, seed=seed, full=evaluate(model, samples), grid={}, recall={}, ranking={}, pooling={})
    jobs = [(m, a, layer) for layer in range(1, L + 1) for a in ALPHAS for m in METHODS]
    start = time.time()
    for i, (method, alpha, layer) in enumerate(jobs, 1):
        key = f"{method} a={alpha} M={layer}"
        res["grid"][key], res["recall"][key] = measure(model, samples, alpha=alpha, layer=layer,
                                                       selection=SELECTION[method], seed=i)
        progress(f"[{i:3d}/{len(jobs)}] {method:10s} alpha={alpha:<4} M={layer}  accuracy {res['grid'][key]:.3f}  "
                 f"answer patch kept {res['recall'][key]:.3f}   {time.time() - start:4.0f} s")
    best_m = max(range(1, L + 1), key=lambda layer: (res["recall"][f"llm-vtp a=0.1 M={layer}"], -layer))
    res["ablation_layer"] = best_m
    for ranking in ("frame", "sequence"):
        res["ranking"][ranking] = measure(model, samples, alpha=0.1, layer=best_m, ranking=ranking)
    for pool in ("max", "mean", "min"):
        res["pooling"][pool] = measure(model, samples, alpha=0.1, layer=best_m, head_pool=pool)
    return res


def table(res, L) -> str:
    lines = [f"all tokens: accuracy {res['full']:.3f}   ({res['n']} held-out questions, seed {res['seed']})", "",
             "accuracy / fraction of questions whose answer patch was kept", "",
             "| method | M | " + " | ".join(f"alpha {a}" for a in ALPHAS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in ALPHAS) + " |"]
    for layer in range(1, L + 1):
        for m in METHODS:
            cells = [f"{res['grid'][f'{m} a={a} M={layer}']:.3f} / {res['recall'][f'{m} a={a} M={layer}']:.3f}"
                     for a in ALPHAS]
            lines.append(f"| {m} | {layer} | " + " | ".join(cells) + " |")
    M = res["ablation_layer"]
    fmt = lambda r: f"{r[0]:.3f} / {r[1]:.3f}"  # noqa: E731
    lines += ["", f"at alpha 0.1, M {M} (accuracy / answer patch kept): ranking per frame {fmt(res['ranking']['frame'])}, "
              f"whole sequence {fmt(res['ranking']['sequence'])};  head pooling max {fmt(res['pooling']['max'])}, "
              f"mean {fmt(res['pooling']['mean'])}, min {fmt(res['pooling']['min'])}"]
    return "\n".join(lines)


def plot(res, layer, path):
    """Against alpha at layer M, one line per method: the fraction of questions whose answer patch was kept
    (solid) and the accuracy (small squares); all-token accuracy dashed. Drawn by hand (no library)."""
    W, H, m = 420, 300, 40
    img = png.canvas(H, W, png.WHITE)
    png.fill(img, H - m, m, 2, W - 2 * m, png.BLACK)  # x axis
    png.fill(img, m, m, H - 2 * m, 2, png.BLACK)  # y axis, accuracy 0..1
    for k in range(11):  # ticks every 0.1 of accuracy
        png.fill(img, H - m - round(k / 10 * (H - 2 * m)), m - 5, 1, 5, png.BLACK)
    xs = [m + 10 + round(i / (len(ALPHAS) - 1) * (W - 2 * m - 20)) for i in range(len(ALPHAS))]
    for x in xs:
        png.fill(img, H - m, x, 5, 1, png.BLACK)
    y = lambda acc: H - m - round(acc * (H - 2 * m))  # noqa: E731
    for x in range(m, W - m, 8):  # all tokens, dashed grey
        png.fill(img, y(res["full"]), x, 2, 4, png.GREY)
    colours = {"llm-vtp": png.PALETTE["green"], "random": png.PALETTE["blue"], "complement": png.PALETTE["red"]}
    for method, colour in colours.items():
        pts = [(x, y(res["recall"][f"{method} a={a} M={layer}"])) for x, a in zip(xs, ALPHAS)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            for t in torch.linspace(0, 1, 200).tolist():
                png.fill(img, round(y0 + (y1 - y0) * t) - 1, round(x0 + (x1 - x0) * t) - 1, 3, 3, colour)
        for x, yy in pts:
            png.fill(img, yy - 3, x - 3, 7, 7, colour)
        for x, a in zip(xs, ALPHAS):  # accuracy: a hollow square
            png.outline(img, y(res["grid"][f"{method} a={a} M={layer}"]) - 5, x - 5, 11, 11, colour, width=2)
    png.write_png(path, img)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp.experiments", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="held-out questions")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--weights", type=Path, default=toy.ASSETS)
    p.add_argument("--plot", type=Path, default=Path("accuracy_vs_alpha.png"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    model = toy.load(args.weights)
    res = run(model, args.n, args.seed, progress=(lambda s: None) if args.json else print)
    L = model.llm.cfg.n_layers
    plot(res, res["ablation_layer"], args.plot)
    if args.json:
        print(json.dumps(res))
    else:
        print(table(res, L))
        print(f"wrote {args.plot}: against alpha at M={res['ablation_layer']} (x: alpha {', '.join(map(str, ALPHAS))}; "
              "y: 0..1 in steps of 0.1): lines = answer patch kept, hollow squares = accuracy; green LLM-VTP, "
              "blue random, red complement, grey dashes all-token accuracy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
