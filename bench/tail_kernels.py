"""What the uncompiled graph tail of a pruned prefill spends its time on, kernel by kind, and what two rewrites of
the element-wise steps would save: one H100 question behind a number in bench/RESULTS.md.

    python bench/tail_kernels.py --out OUT      # Vicuna-7B shape, random bf16 weights; OUT/tail_kernels.json

The tail is layers M+1..L of an LLM-VTP prefill after Eq. 7-8: `rows` rows (336 at alpha 0.1, 16 frames of 144,
35 + 60 text rows), written into empty caches, the causal triangle. As in `generate.PrefillTail`, the 27 layers
after M = 5 are captured in one CUDA graph and replayed (median of 20, CUDA events), on the model as `answer` runs
it on CUDA (q+k+v fused, nothing compiled), then with one change at a time:
- "mask skipped": the (rows x rows) boolean mask is not built (the fused causal kernel does not read it);
- "torch rms_norm": torch.nn.functional.rms_norm (float32) in place of the written-out mean of squares, square
  root and product; the cast back to bf16 before the gain stays.
Each variant's output is compared with the model's as it is (relative max difference, bf16). The kernel breakdown
is torch.profiler's over the same 27 layers run without the graph (the same kernels), summed by kind.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from profile_gpu import random_model  # noqa: E402
from minivtp import model as M  # noqa: E402
from minivtp.flops import VICUNA_7B  # noqa: E402


def torch_rms_norm(x, weight, eps):  # the same math: float32 mean of squares, back to x's dtype before the gain
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", type=int, default=336)
    p.add_argument("--layer", type=int, default=5)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = random_model(VICUNA_7B).fuse_qkv()
    blocks = model.layers[args.layer:]
    x0 = torch.randn(1, args.rows, VICUNA_7B.dim, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(args.rows, device="cuda") * 7  # kept rows: increasing positions with gaps
    cos, sin = model.rope(pos)
    caches = [model.new_caches(1, args.rows)[0] for _ in blocks]

    def tail():
        x = x0
        for block, cache in zip(blocks, caches):
            cache.length = 0
            x = block(x, cos, sin, pos, cache, slot=0)
        return x

    def graph_ms():
        tail()  # warm-up, outside the graph
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            tail()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = tail()
        times = []
        for _ in range(25):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times[5:]), out.float()

    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=args.rows, layers=len(blocks))
    base, want = graph_ms()

    def rel_err(got):
        return ((got - want).abs().max() / want.abs().max()).item()

    from torch.profiler import ProfilerActivity, profile
    tail()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tail()
        torch.cuda.synchronize()
    kinds = {}
    for ev in prof.key_averages():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            ms, count = kinds.get(ev.key, (0.0, 0))  # summed by the full name: truncated ones would collide
            kinds[ev.key] = (ms + ev.self_device_time_total / 1e3, count + ev.count)
    res["kernels"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1][0]))
    res["graph_ms"] = {"as answer runs it": base}
    res["rel_err"] = {}
    causal_mask = M.causal_mask
    M.causal_mask = lambda q_pos, k_pos: None  # the tail's prefill into empty caches takes the causal kernel
    res["graph_ms"]["mask skipped"], got = graph_ms()
    res["rel_err"]["mask skipped"] = rel_err(got)
    M.causal_mask = causal_mask
    for block in blocks:
        block.attn_norm.kernel = block.mlp_norm.kernel = torch_rms_norm
    res["graph_ms"]["torch rms_norm"], got = graph_ms()
    res["rel_err"]["torch rms_norm"] = rel_err(got)
    groups = {"matmul": ("nvjet", "gemm", "cutlass"), "attention": ("sdpa", "flash", "fmha")}
    res["kernel_ms"] = {g: sum(ms for k, (ms, _) in kinds.items() if any(w in k.lower() for w in words))
                        for g, words in groups.items()}
    res["kernel_ms"]["everything else"] = sum(v[0] for v in kinds.values()) - sum(res["kernel_ms"].values())
    res["launches_per_layer"] = sum(n for _, n in kinds.values()) / len(blocks)
    print(f"{len(blocks)} layers at {args.rows} rows, kernels without the graph ({res['launches_per_layer']:.0f} a "
          "layer), ms: " + ", ".join(f"{g} {ms:.2f}" for g, ms in res["kernel_ms"].items()))
    for k, (ms, n) in list(res["kernels"].items())[:25]:
        print(f"  {ms:7.3f} ms x{n:<4d} {k[:100]}")
    for k, v in res["graph_ms"].items():
        err = f" (rel err vs as-is {res['rel_err'][k]:.1e})" if k in res["rel_err"] else ""
        print(f"graph {k}: {v:.3f} ms{err}")
    (args.out / "tail_kernels.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
