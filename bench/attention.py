"""What is left of a decode step besides its weights: one decode row's attention over a static cache, kernel by
kernel, and the prefill's matmuls at the row counts a pruned prompt leaves.

    python -m bench.attention --out OUT                # both parts, OUT/attention.json
    python -m bench.attention --out OUT --parts attention
    python -m bench.attention --out OUT --tiny         # the same code at a tiny shape, on the CPU: a smoke test

Parts (--parts):
  attention  32 layers' attention of one query row (32 heads of 128, bf16) over a cache of L slots of which `used`
             hold keys (L 512 / used 407: eval's bucketed cache after an alpha 0.1 M 10 prefill and 72 tokens;
             407 / 407: answer's exact size; 2048 / 1900), each layer its own K and V (so L2 does not hold them),
             the 32 calls captured in one CUDA graph and replayed (median of 20): what a captured decode step pays.
             Kernels: SDPA with the boolean mask as the step builds it (default choice; cuDNN, efficient and math
             forced), flash-attention's varlen kernel told the used length (seqused_k), SDPA over exactly the used
             rows with no mask (flash forced; default), flex_attention compiled with the mask as a score_mod, the
             math compiled by Inductor. Each checked against float32 math (max abs error)
  gemm       the four products of a Vicuna-7B layer (q+k+v, o, gate+up fused and gate alone, down) at 2,399 rows
             (the unpruned prompt), 2,304, 512, 336 (alpha 0.1 after layer M, padded to 16) and 256: us and TFLOP/s
"""

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench import common
from minivtp import fast

PARTS = ("attention", "gemm")


def graph_ms(fn, reps=20):
    """Median ms of fn() captured in a CUDA graph and replayed (on a CPU: fn() itself, timed)."""
    if not torch.cuda.is_available():
        return common.median_ms(fn, "cpu", warmup=1, reps=3)
    fn()  # a first call (a compile, a kernel's plan), then fast.capture's two warm-ups and the capture
    g, _ = fast.capture(fn)
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(True), torch.cuda.Event(True)
    ts = []
    for _ in range(reps):
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def attention_part(tiny: bool) -> dict:
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    H, D, layers = (4, 16, 4) if tiny else (32, 128, 32)
    sizes = ((64, 50), (50, 50)) if tiny else ((512, 407), (407, 407), (2048, 1900))
    res = {}
    for L, used in sizes:
        ks = [torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        vs = [torch.randn(1, H, L, D, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        q = torch.randn(1, H, 1, D, device=dev, dtype=torch.bfloat16)
        kpos = torch.full((L,), 2**30, device=dev)
        kpos[:used] = torch.arange(used, device=dev)
        qpos = torch.tensor([used - 1], device=dev)
        mask = kpos[None, :] <= qpos[:, None]
        ref = [F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask) for k, v in zip(ks, vs)]
        row = {}

        def run(name, one):
            try:
                outs = [None] * layers

                def fn():
                    for i in range(layers):
                        outs[i] = one(q, ks[i], vs[i])
                ms = graph_ms(fn)
                row[name + "_err"] = max((o.float() - r).abs().max().item() for o, r in zip(outs, ref))
                row[name + "_ms"] = ms
                print(f"L={L} used={used} {name}: {ms * 1e3 / layers:.1f} us/layer, {layers} layers {ms:.3f} ms, "
                      f"err {row[name + '_err']:.1e}", flush=True)
            except Exception as e:  # a kernel this build or device lacks: said, and the others go on
                row[name + "_error"] = repr(e)[:300]
                print(f"L={L} {name}: not run here: {repr(e)[:200]}", flush=True)

        run("sdpa_default", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        for be in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
            def forced(q, k, v, be=be):
                with sdpa_kernel([getattr(SDPBackend, be)]):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            run("sdpa_" + be.lower(), forced)
        if cuda:
            cu_q = torch.tensor([0, 1], device=dev, dtype=torch.int32)
            cu_k = torch.tensor([0, L], device=dev, dtype=torch.int32)
            used_t = torch.tensor([used], device=dev, dtype=torch.int32)

            def varlen(q, k, v):
                out = torch.ops.aten._flash_attention_forward(
                    q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu_q, cu_k, 1, L, 0.0, False,
                    False, seqused_k=used_t)[0]
                return out.transpose(0, 1)[None]
            run("flash_varlen_seqused", varlen)
        else:
            common.skip("flash_varlen_seqused", "flash-attention's kernels are CUDA's")

        def exact(q, k, v):  # only the used rows, no mask: what an exact-size cache would read (not graph-safe as
            return F.scaled_dot_product_attention(q, k[:, :, :used], v[:, :, :used])  # the used count grows)
        if cuda:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                run("flash_exact_nomask", exact)
        run("default_exact_nomask", exact)
        if cuda:
            from torch.nn.attention.flex_attention import flex_attention
            flex = torch.compile(flex_attention)

            def score_mod(score, b, h, qi, ki):
                return torch.where(kpos[ki] <= qpos[0], score, -float("inf"))
            run("flex_compiled", lambda q, k, v: flex(q, k, v, score_mod=score_mod))
            scale = 1 / math.sqrt(D)

            def manual(q, k, v):
                s = (q.float() @ k.float().transpose(-1, -2)) * scale
                s = s.masked_fill(~mask, float("-inf"))
                return (s.softmax(-1) @ v.float()).to(q.dtype)
            run("manual_compiled", torch.compile(manual))
        else:
            common.skip("flex_compiled, manual_compiled", "torch.compile on a CPU takes minutes")
        res[f"L{L} used{used}"] = row
    return res


def gemm_part(tiny: bool) -> dict:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    C, Fh = (64, 172) if tiny else (4096, 11008)
    shapes = dict(qkv=(3 * C, C), o=(C, C), gate=(Fh, C), gate_up=(2 * Fh, C), down=(C, Fh))
    res = {}
    for M in ((40, 16) if tiny else (2399, 2304, 336, 256, 512)):
        x = {k: torch.randn(M, kin, device=dev, dtype=torch.bfloat16) for k, (n, kin) in shapes.items()}
        w = {k: torch.randn(n, kin, device=dev, dtype=torch.bfloat16) for k, (n, kin) in shapes.items()}
        row = {}
        for k, (n, kin) in shapes.items():
            ms = graph_ms(lambda: [F.linear(x[k], w[k]) for _ in range(10)]) / 10
            row[k] = dict(us=ms * 1e3, tflops=2 * M * n * kin / (ms / 1e3) / 1e12)
        print(f"M={M}: " + ", ".join(f"{k} {r['us']:.0f} us {r['tflops']:.0f} TF/s" for k, r in row.items()), flush=True)
        res[f"M{M}"] = row
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for attention.json")
    p.add_argument("--parts", default="", help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    p.add_argument("--tiny", action="store_true", help="a tiny shape, on the CPU when there is no GPU: a smoke test")
    args = p.parse_args(argv)
    chosen = common.parts(args.parts, PARTS)
    res = dict(common.machine(), script="attention", tiny=args.tiny, parts=chosen)
    t = time.perf_counter()
    if "attention" in chosen:
        res["attention"] = attention_part(args.tiny)
        common.write_json(args.out, "attention.json", res)
    if "gemm" in chosen:
        res["gemm"] = gemm_part(args.tiny)
    res["total_s"] = time.perf_counter() - t
    print("wrote", common.write_json(args.out, "attention.json", res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
