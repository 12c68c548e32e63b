"""The paper's comparisons, on the toy video LLM: does the LLM's own attention keep the tokens that matter?

    python -m minivtp experiments                      # ~5.5 minutes on 2 CPU cores; table + accuracy_vs_alpha.png
    python -m minivtp experiments --n 100 --seed 7 --json

On held-out questions: accuracy with all tokens, with LLM-VTP, with random tokens (the same count per frame), with
the complement (every token LLM-VTP drops, Tab. 10), and with the rivals FastV (the last row's attention at the
same layer, the same budget over the whole video) and Look-M (every layer's cache after a full prefill, the same
number of cache rows), for alpha in {0.05, 0.1, 0.2, 0.5} and every M; then per-frame vs whole-sequence ranking
(Tab. 5) and max vs mean vs min head pooling (Tab. 6) at alpha 0.1 and the toy's M. PruMerge+ needs a vision
tower's [CLS] token, which the toy does not have.

Besides accuracy, each setting reports how often the patch of the object the model names was kept: the patch the
answer's second word has to read.

Last, LLM-VTP as the paper writes it against the rule its authors' released code runs (vtp.VARIANTS): both whole,
and each of the released code's four switches alone, at every alpha, at the toy's M and the layer after it
(`variants`, tutorial chapter 12). `--variant released` runs the grid's LLM-VTP, random and complement under the
released rule; FastV and Look-M keep the paper's budget.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from minivtp.generate import Method
from minivtp.lab import png, toy
from minivtp.rivals import FastV, LookM
from minivtp.vtp import n_keep

ALPHAS = (0.05, 0.1, 0.2, 0.5)
METHODS = ("llm-vtp", "random", "complement", "fastv", "look-m")
# the paper's rule, the released code's, and each switch of the released code alone on the paper's rule
RULES = {"paper": {}, "released": dict(variant="released"), "rope before": dict(rope="before"),
         "no causal mask": dict(causal=False), "max over questions": dict(question_pool="max"),
         "floor count": dict(count="floor")}
# the toy's M, and the next layer, where the question's attention has moved off the objects (tutorial chapter 10)
VARIANT_LAYERS = (toy.DEFAULT_LAYER, toy.DEFAULT_LAYER + 1)
COLOURS = {"llm-vtp": png.PALETTE["green"], "random": png.PALETTE["blue"], "complement": png.PALETTE["red"],
           "fastv": png.PALETTE["yellow"], "look-m": (170, 80, 200)}


def method_for(name: str, alpha: float, layer: int, variant: str = "paper") -> Method:
    """The method at a budget of `alpha`: LLM-VTP's count per frame; FastV the same count over the whole video;
    Look-M as many cache rows as LLM-VTP keeps (prefix + kept video + question), half recent, half important.
    `variant` is LLM-VTP's (and its baselines'); the rivals' budget is the paper's count."""
    if name == "look-m":
        Nq = len(toy.question("shape"))  # question rows
        N = len(toy.PREFIX) + toy.T * toy.NV + Nq
        rows = len(toy.PREFIX) + toy.T * n_keep(alpha, toy.NV) + Nq
        half = (rows / 2 + 0.25) / N  # int(N * half) twice comes to `rows` (or one fewer when it is odd)
        return LookM(recent=half, important=half)
    if name == "fastv":
        return FastV(alpha=toy.T * n_keep(alpha, toy.NV) / (toy.T * toy.NV), layer=layer)
    return Method(name, alpha=alpha, layer=layer, variant=variant)


def measure(model, samples, method=None, seed=0):
    """(accuracy, kept): the fraction answered right, and the fraction whose named object's patch was kept."""
    right = hit = 0
    for s in samples:
        words, out = toy.ask(model, s, method=method, seed=seed)
        right += toy.is_right(s, words)
        hit += toy.answer_patch(s, words) in set(out.kept.tolist()) if method is not None else 1
    return right / len(samples), hit / len(samples)


def variants(model, samples, layer=toy.DEFAULT_LAYER, progress=None):
    """{rule: {alpha: (accuracy, named patch kept)}} for each of RULES at every alpha, LLM-VTP at `layer`."""
    out = {}
    for rule, switches in RULES.items():
        out[rule] = {a: measure(model, samples, Method(alpha=a, layer=layer, **switches)) for a in ALPHAS}
        if progress:
            progress(f"{rule:20s} " + "  ".join(f"a={a}: {v[0]:.3f}" for a, v in out[rule].items()))
    return out


def variant_table(res) -> str:
    """variants()' result as a table: one row per rule, accuracy / named patch kept per alpha."""
    lines = ["| rule | " + " | ".join(f"alpha {a}" for a in ALPHAS) + " |",
             "| --- | " + " | ".join("---" for _ in ALPHAS) + " |"]
    for rule, row in res.items():
        lines.append(f"| {rule} | " + " | ".join(f"{row[a][0]:.3f} / {row[a][1]:.3f}" for a in ALPHAS) + " |")
    return "\n".join(lines)


def run(model, n=300, seed=2024, progress=print, variant="paper"):
    g = torch.Generator().manual_seed(seed)
    samples = [toy.make_sample(g) for _ in range(n)]
    L, M = model.llm.cfg.n_layers, toy.DEFAULT_LAYER
    res = dict(n=n, seed=seed, layer=M, full=measure(model, samples)[0], grid={}, kept={}, ranking={}, pooling={},
               variant=variant)
    jobs = [(m, a, layer) for layer in range(1, L + 1) for a in ALPHAS for m in METHODS
            if m != "look-m" or layer == 1]  # Look-M has no layer
    start = time.time()
    for i, (name, alpha, layer) in enumerate(jobs, 1):
        key = f"{name} a={alpha}" + ("" if name == "look-m" else f" M={layer}")
        res["grid"][key], res["kept"][key] = measure(model, samples, method_for(name, alpha, layer, variant), seed=i)
        progress(f"[{i:3d}/{len(jobs)}] {key:24s} accuracy {res['grid'][key]:.3f}  named patch kept "
                 f"{res['kept'][key]:.3f}   {time.time() - start:4.0f} s")
    for ranking in ("frame", "sequence"):
        res["ranking"][ranking] = measure(model, samples, Method(alpha=0.1, layer=M, ranking=ranking,
                                                                 variant=variant))
    for pool in ("max", "mean", "min"):
        res["pooling"][pool] = measure(model, samples, Method(alpha=0.1, layer=M, head_pool=pool, variant=variant))
    res["variants"] = {}  # JSON keys are strings: M and the alphas as their decimal text
    for layer in VARIANT_LAYERS:
        progress(f"M={layer}: the paper's rule against the released code's, and each of its switches alone")
        rows = variants(model, samples, layer, progress)
        res["variants"][str(layer)] = {rule: {str(a): v for a, v in row.items()} for rule, row in rows.items()}
    res["alpha_0.1"] = {m: res["grid"][f"{m} a=0.1" + ("" if m == "look-m" else f" M={M}")] for m in METHODS}
    return res


def table(res, L) -> str:
    lines = [f"all tokens: accuracy {res['full']:.3f}   ({res['n']} held-out questions, seed {res['seed']})", "",
             "accuracy / fraction of questions whose named object's patch was kept", "",
             "| method | M | " + " | ".join(f"alpha {a}" for a in ALPHAS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in ALPHAS) + " |"]
    for layer in range(1, L + 1):
        for m in METHODS:
            if m == "look-m" and layer > 1:
                continue
            keys = [f"{m} a={a}" + ("" if m == "look-m" else f" M={layer}") for a in ALPHAS]
            cells = [f"{res['grid'][k]:.3f} / {res['kept'][k]:.3f}" for k in keys]
            lines.append(f"| {m} | {'-' if m == 'look-m' else layer} | " + " | ".join(cells) + " |")
    M = res["layer"]
    fmt = lambda r: f"{r[0]:.3f} / {r[1]:.3f}"  # noqa: E731
    lines += ["", f"at alpha 0.1, M {M} (accuracy / named patch kept): ranking per frame "
              f"{fmt(res['ranking']['frame'])}, whole sequence {fmt(res['ranking']['sequence'])};  head pooling max "
              f"{fmt(res['pooling']['max'])}, mean {fmt(res['pooling']['mean'])}, min {fmt(res['pooling']['min'])}"]
    if res.get("variant", "paper") != "paper":
        lines.insert(1, f"LLM-VTP, random and complement under the {res['variant']} rule (FastV, Look-M: the paper's "
                        "budget)")
    zero = ", ".join(str(a) for a in ALPHAS if n_keep(a, toy.NV, "floor") == 0)
    for layer, by_rule in res.get("variants", {}).items():
        rows = {rule: {float(a): v for a, v in row.items()} for rule, row in by_rule.items()}
        lines += ["", f"LLM-VTP at M {layer}: the paper's rule, the authors' released code's, and each of its "
                  f"switches alone (accuracy / named patch kept; the floor count keeps int({toy.NV} * alpha) = 0 "
                  f"tokens of a frame at alpha {zero}: no video at all)", "", variant_table(rows)]
    return "\n".join(lines)


def plot(res, path):
    """Accuracy against alpha at the toy's M, one line per method; all-token accuracy black dashes. Drawn by hand:
    lines on one level (FastV, Look-M and LLM-VTP near 1.0) are drawn as nested stripes, widest first."""
    W, H, m = 460, 300, 40
    img = png.canvas(H, W, png.WHITE)
    png.fill(img, H - m, m, 2, W - 2 * m, png.BLACK)  # x axis
    png.fill(img, m, m, H - 2 * m, 2, png.BLACK)  # y axis, accuracy 0..1
    for k in range(11):  # ticks every 0.1 of accuracy
        png.fill(img, H - m - round(k / 10 * (H - 2 * m)), m - 5, 1, 5, png.BLACK)
    xs = [m + 10 + round(i / (len(ALPHAS) - 1) * (W - 2 * m - 20)) for i in range(len(ALPHAS))]
    for x in xs:
        png.fill(img, H - m, x, 5, 1, png.BLACK)
    y = lambda acc: H - m - round(acc * (H - 2 * m))  # noqa: E731
    # widest first, LLM-VTP last and thinnest: lines on the same level show as nested stripes, none hidden
    for method, width in (("fastv", 11), ("look-m", 7), ("random", 3), ("complement", 3), ("llm-vtp", 3)):
        colour, suffix = COLOURS[method], "" if method == "look-m" else f" M={res['layer']}"
        pts = [(x, y(res["grid"][f"{method} a={a}{suffix}"])) for x, a in zip(xs, ALPHAS)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            for t in torch.linspace(0, 1, 200).tolist():
                png.fill(img, round(y0 + (y1 - y0) * t) - width // 2, round(x0 + (x1 - x0) * t) - width // 2, width,
                         width, colour)
        for x, yy in pts:
            png.fill(img, yy - width // 2 - 2, x - width // 2 - 2, width + 4, width + 4, colour)
    for x in range(m, W - m, 8):  # all tokens, dashed, drawn last so a method on the same level does not hide it
        png.fill(img, y(res["full"]) - 1, x, 3, 4, png.BLACK)
    png.write_png(path, img)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp experiments", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="held-out questions")
    p.add_argument("--seed", type=int, default=2024, help="which held-out questions")
    p.add_argument("--weights", type=Path, default=toy.ASSETS)
    p.add_argument("--plot", type=Path, default=Path("accuracy_vs_alpha.png"))
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress lines)")
    p.add_argument("--variant", default="paper", choices=("paper", "released"),
                   help="LLM-VTP's rule in the grid: the paper's or the authors' released code's (the last table "
                        "has both either way)")
    args = p.parse_args(argv)
    if args.n < 1:
        print(f"error: --n {args.n} must be at least 1", file=sys.stderr)
        return 2
    try:
        model = toy.load(args.weights)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = run(model, args.n, args.seed, progress=(lambda s: print(s, file=sys.stderr)) if args.json else print,
              variant=args.variant)
    plot(res, args.plot)
    if args.json:
        print(json.dumps(res))
    else:
        print(table(res, model.llm.cfg.n_layers))
        print(f"wrote {args.plot}: accuracy against alpha ({', '.join(map(str, ALPHAS))}) at M={res['layer']}, y 0..1 "
              "in steps of 0.1; green LLM-VTP, blue random, red complement, yellow FastV, purple Look-M, black dashes "
              "all tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
