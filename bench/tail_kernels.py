"""What the uncompiled graph tail of a pruned prefill spends its time on, kernel by kind, and what two rewrites of
the element-wise steps would save: one H100 question behind a number in bench/RESULTS.md.

    python bench/tail_kernels.py --out OUT      # Vicuna-7B shape, random bf16 weights; OUT/tail_kernels.json

The tail is layers M+1..L of an LLM-VTP prefill after Eq. 7-8: `rows` rows (336 at alpha 0.1, 16 frames of 144,
35 + 60 text rows), written into empty caches, the causal triangle. The 27 layers after M = 5 are a
`generate.PrefillTail` (one CUDA graph, the fast path's own), replayed (median of 20, CUDA events), on the model as
`answer` runs it on CUDA (q+k+v fused, nothing compiled), then, captured anew, with one change at a time:
- "mask skipped": the (rows x rows) boolean mask is not built (the fused causal kernel does not read it);
- "torch rms_norm": torch.nn.functional.rms_norm (float32) in place of the written-out mean of squares, square
  root and product; the cast back to bf16 before the gain stays.
Each variant's output is compared with the model's as it is (relative max difference, bf16). The kernel breakdown
is torch.profiler's over the same 27 layers run without the graph (the same kernels), summed by kind.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu import cuda_ms  # noqa: E402  (bench/gpu.py)
from profile_gpu import cuda_kernels, random_model  # noqa: E402
from minivtp import model as M  # noqa: E402
from minivtp.flops import VICUNA_7B  # noqa: E402
from minivtp.generate import PrefillTail  # noqa: E402


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
    x = torch.randn(1, args.rows, VICUNA_7B.dim, device="cuda", dtype=torch.bfloat16)
    pos = torch.arange(args.rows, device="cuda") * 7  # kept rows: increasing positions with gaps
    caches = model.new_caches(1, args.rows)

    def graph_ms():  # a tail captured as the model now is; (median ms of a replay, its output in float32)
        tail = PrefillTail(model, args.layer, args.rows)
        tail(x, pos, caches)  # its inputs in place; the rows fill the graph, so no padding
        return cuda_ms(tail.graph.replay, warmup=5, reps=20), tail.out.float(), tail

    base, want, tail = graph_ms()
    n_layers = len(tail.caches)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=args.rows, layers=n_layers)

    def rel_err(got):
        return ((got - want).abs().max() / want.abs().max()).item()

    tail.run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tail.run()  # the same layers without the graph: the same kernels, one by one
        torch.cuda.synchronize()
    kinds = res["kernels"] = cuda_kernels(prof)
    res["graph_ms"] = {"as answer runs it": base}
    res["rel_err"] = {}
    causal_mask = M.causal_mask
    M.causal_mask = lambda q_pos, k_pos: None  # the tail's prefill into empty caches takes the causal kernel
    res["graph_ms"]["mask skipped"], got, _ = graph_ms()
    res["rel_err"]["mask skipped"] = rel_err(got)
    M.causal_mask = causal_mask
    for block in model.layers[args.layer:]:
        block.attn_norm.kernel = block.mlp_norm.kernel = torch_rms_norm
    res["graph_ms"]["torch rms_norm"], got, _ = graph_ms()
    res["rel_err"]["torch rms_norm"] = rel_err(got)
    groups = {"matmul": ("nvjet", "gemm", "cutlass"), "attention": ("sdpa", "flash", "fmha")}
    res["kernel_ms"] = {g: sum(ms for k, (ms, _) in kinds.items() if any(w in k.lower() for w in words))
                        for g, words in groups.items()}
    res["kernel_ms"]["everything else"] = sum(v[0] for v in kinds.values()) - sum(res["kernel_ms"].values())
    res["launches_per_layer"] = sum(n for _, n in kinds.values()) / n_layers
    print(f"{n_layers} layers at {args.rows} rows, kernels without the graph ({res['launches_per_layer']:.0f} a "
          "layer), ms: " + ", ".join(f"{g} {ms:.2f}" for g, ms in res["kernel_ms"].items()))
    for k, (ms, n) in list(res["kernels"].items())[:25]:
        print(f"  {ms:7.3f} ms x{n:<4d} {k[:100]}")
    for k, v in res["graph_ms"].items():
        err = f" (rel err vs as-is {res['rel_err'][k]:.1e})" if k in res["rel_err"] else ""
        print(f"graph {k}: {v:.3f} ms{err}")
    (args.out / "tail_kernels.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
