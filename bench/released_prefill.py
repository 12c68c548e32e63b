"""Prefill time of LLM-VTP's two rules at PLLaVA-7B shape: the paper's, and the authors' released code's.

    python bench/released_prefill.py --out DIR            # a GPU, Vicuna-7B shape, bf16: DIR/released_prefill.json
    python bench/released_prefill.py --tiny --device cpu  # the same measurement at a toy shape, seconds on a CPU

The released rule (Method(variant="released"), vtp.VARIANTS) scores layer M's video tokens with q and k before
RoPE and no causal mask: the keys are projected a second time from the layer's input (the cache holds them with
RoPE), and every question row's softmax runs over all N keys. It also keeps int(alpha * Nv) a frame instead of
ceil(alpha * Nv), so fewer rows go on to layers M+1..L. "released, ceil count" separates the two: the same rows
as the paper's rule, only the scoring differs. Shape: 35 prefix rows + 16 frames x 144 (PLLaVA-7B) + 60 question
rows = 2,399, random weights (speed does not depend on their values). Times are medians after warm-up (CUDA
events on a GPU). Prints one line per setting and the ratios to the paper's rule measured in this run.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minivtp.flops import VICUNA_7B  # noqa: E402
from minivtp.generate import Method, prefill  # noqa: E402
from minivtp.model import Config, Transformer  # noqa: E402
from minivtp.vtp import VideoSpan  # noqa: E402

SHAPES = {"pllava-7b": (VICUNA_7B, 35, 16, 144, 60),
          "tiny": (Config(vocab_size=97, dim=64, n_layers=4, n_heads=4, n_kv_heads=4, hidden_dim=128,
                          max_seq_len=512), 5, 4, 16, 6)}
RULES = {"paper": dict(variant="paper"), "released": dict(variant="released"),
         "released, ceil count": dict(variant="released", count="ceil")}


def random_model(cfg, device, dtype, std=0.02, seed=0):
    """A Transformer with random weights made on `device` directly (built on meta, no host copy)."""
    with torch.device("meta"):
        model = Transformer(cfg).to(dtype)
    model = model.to_empty(device=device)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32) * std)
    if cfg.tie_embeddings:
        model.output.weight = model.embed.weight
    return model.eval()


def median_ms(fn, device, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def measure(model, video, N, alpha, layer, reps, scores):
    device = model.embed.weight.device
    embeds = torch.randn(1, N, model.cfg.dim, device=device, generator=torch.Generator(device).manual_seed(1))
    embeds = (embeds * 0.02).to(model.embed.weight.dtype)
    out = {}
    for rule, switches in RULES.items():
        method = Method(alpha=alpha, layer=layer, scores=scores, **switches)
        kept = []

        def run():
            caches = model.new_caches(1, N + 1)
            _, pruning = prefill(model, embeds, caches, video, method)
            kept[:] = [pruning.kept.numel()]

        out[rule] = dict(ms=median_ms(run, device, reps=reps), kept=kept[0])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                   help="default bfloat16 on CUDA, float32 elsewhere")
    p.add_argument("--tiny", action="store_true", help="a toy shape instead of PLLaVA-7B's, to check on a CPU")
    p.add_argument("--alphas", default="0.1,0.2")
    p.add_argument("--layer", type=int, default=10, help="M (the tiny shape uses 2)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="write released_prefill.json here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    cfg, prefix, T, Nv, Nq = SHAPES["tiny" if args.tiny else "pllava-7b"]
    layer = 2 if args.tiny else args.layer
    N = prefix + T * Nv + Nq
    video = VideoSpan(prefix, T, Nv)
    model = random_model(cfg, device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    shape = "tiny" if args.tiny else "Vicuna-7B"
    print(f"{name}, {dtype}, {shape} shape, N = {N} ({T} x {Nv} video rows), M = {layer}")
    res = dict(device=name, dtype=str(dtype), N=N, T=T, Nv=Nv, layer=layer, runs={})
    with torch.no_grad():
        for alpha in map(float, args.alphas.split(",")):
            for scores in ("fast", "literal"):
                r = measure(model, video, N, alpha, layer, args.reps, scores)
                res["runs"][f"alpha {alpha} {scores}"] = r
                base = r["paper"]["ms"]
                for rule, v in r.items():
                    print(f"alpha {alpha:<4} scores={scores:7s} {rule:22s} prefill {v['ms']:9.2f} ms  "
                          f"{v['ms'] / base:5.3f}x the paper's  kept {v['kept']} video tokens")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "released_prefill.json").write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out / 'released_prefill.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
