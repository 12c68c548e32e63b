"""The fast path against the readable one at Vicuna-7B shape, on one GPU: where pruning pays in prefill time.

    python bench/fast_path.py --out OUT      # one run, about 4 minutes on an H100; OUT/fast_path.json

First, a float32 check: 72 greedy tokens through a FastDecoder on the model as eval prepares it on CUDA (fused
q+k+v, compiled blocks: prepare_fast) equal the eager path's on the model as loaded, in every pruned setting.
Then three variants of one bf16 model, one after another: as it reads ("plain"); q+k+v fused (Transformer.fuse_qkv,
what `answer` runs on CUDA); and its blocks compiled too (Transformer.compile_blocks, eval's default on CUDA).
For each:
1. Pruned prefill, 35 + 16 x 144 + 60 = 2,399 rows, no pruning and alpha {0.2, 0.1} x M {5, 10}, median of 7
   after warm-up, CUDA events: the loop (every layer launched from Python) and the fast path of a FastDecoder
   (layers M+1..L replayed as one CUDA graph, PrefillTail), rows after M padded to 64, to 16 (the default) and not
   at all. Speed-up against the unpruned prefill of the same variant, beside the FLOPs ratio (minivtp.flops).
2. Decode, 72 tokens after an a0.1 M10 prefill: eager and CUDA graph, and for the compiled variant the graph of
   the tuned step (FastDecoder(compile=True): tuned_block, eval's default); kernel time per step by kind
   (torch.profiler on the eager step); the bandwidth floor from a device copy measured here.
3. Unless --skip-first: the first question in a fresh process against the next ones (eager and graph), step by
   step: what a one-shot `python -m minivtp answer` pays that an evaluation loop does not.
Random bf16 weights made on the GPU: speed does not depend on their values.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu import cuda_ms  # noqa: E402  (bench/gpu.py)
from profile_gpu import cuda_kernels, random_model  # noqa: E402
from minivtp.flops import VICUNA_7B, prefill_flops  # noqa: E402
from minivtp.generate import (FastDecoder, GraphDecode, Method, decode_one_token, generate, prefill,  # noqa: E402
                              prepare_fast)
from minivtp.model import StaticKVCache  # noqa: E402
from minivtp.vtp import VideoSpan  # noqa: E402

PREFIX, T, NV, NQ, NEW = 35, 16, 144, 60, 72
AUTOTUNE = "max-autotune-no-cudagraphs"  # our own graphs capture the compiled kernels
N = PREFIX + T * NV + NQ
SETTINGS = [("none", None), ("a0.2 M5", Method(alpha=0.2, layer=5)), ("a0.2 M10", Method(alpha=0.2, layer=10)),
            ("a0.1 M5", Method(alpha=0.1, layer=5)), ("a0.1 M10", Method(alpha=0.1, layer=10))]


@torch.no_grad()
def prefill_table(model, embeds, label, reps=7):
    video = VideoSpan(PREFIX, T, NV)
    # caches made once (a fresh set would time a 1.3 GB memset); each run gets a copy of the list, as a graph
    # tail puts its own caches in place of layers M+1..L
    pools = [model.new_caches(1, N + NEW) for _ in range(2)]
    decoder = FastDecoder(model)  # the default: rows after layer M padded to a multiple of 16
    coarse = FastDecoder(model, prefill_bucket=64)
    exact = FastDecoder(model, prefill_bucket=1)  # no padding rows: one graph per exact row count
    rows = {}
    for name, method in SETTINGS:
        kw = dict(video=None if method is None else video, method=method or Method(layer=1))
        i = [0]

        def run(tail):
            i[0] += 1
            return prefill(model, embeds, list(pools[i[0] % 2]), tail=tail, **kw)

        ref = prefill(model, embeds, list(pools[0]), **kw)[0]
        got = prefill(model, embeds, list(pools[1]), tail=decoder, **kw)[0]
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        loop_ms = cuda_ms(lambda: run(None), warmup=2, reps=reps)
        graph_ms = cuda_ms(lambda: run(decoder), warmup=2, reps=reps)
        coarse_ms = cuda_ms(lambda: run(coarse), warmup=2, reps=reps)
        exact_ms = cuda_ms(lambda: run(exact), warmup=2, reps=reps)
        f = prefill_flops(model.cfg, PREFIX, T, NV, NQ, alpha=method.alpha if method else 1.0,
                          layer=method.layer if method else model.cfg.n_layers)
        rows[name] = dict(loop_ms=loop_ms, graph_ms=graph_ms, graph64_ms=coarse_ms, graph_exact_rows_ms=exact_ms,
                          flops=f["flops_pruned"] if method else f["flops_full"], logits_rel_err_graph_vs_loop=err)
        print(f"{label} prefill {name}: loop {loop_ms:.1f} ms, graph tail {graph_ms:.1f} ms (rows to 64: {coarse_ms:.1f}, "
              f"exact rows {exact_ms:.1f}), rel err {err:.1e}", flush=True)
    base = rows["none"]
    for r in rows.values():
        r["flops_ratio"] = base["flops"] / r["flops"]
        for k in ("loop", "graph", "graph64"):
            r[f"{k}_speedup"] = base["loop_ms" if k == "loop" else "graph_ms"] / r[f"{k}_ms"]
            r[f"{k}_of_ratio"] = r[f"{k}_speedup"] / r["flops_ratio"]
    return rows


@torch.no_grad()
def decode_table(model, embeds, copy_bps, variant="", tuned=False):
    video = VideoSpan(PREFIX, T, NV)
    kw = dict(video=video, alpha=0.1, layer=10)
    caches = model.new_caches(1, N + NEW)
    logits, _ = prefill(model, embeds, caches, **kw)
    L0 = caches[0].length
    toks = [logits.argmax()]
    for j in range(NEW - 1):
        toks.append(decode_one_token(model, toks[-1], N + j, caches).argmax())
    res = {}
    weight_bytes = sum(p.numel() for p in model.parameters()) * 2 - model.embed.weight.numel() * 2
    res["floor_ms"] = (weight_bytes + L0 * 2 * model.cfg.dim * 2 * model.cfg.n_layers) / copy_bps * 1e3

    def timed(step_fn):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for j in range(NEW - 1):
            if j == 1:
                s.record()
            step_fn(j)
        e.record()
        torch.cuda.synchronize()
        return s.elapsed_time(e) / (NEW - 2)

    caches = model.new_caches(1, N + NEW)
    prefill(model, embeds, caches, **kw)
    res["eager_ms"] = timed(lambda j: decode_one_token(model, toks[j], N + j, caches))
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decode_one_token(model, toks[3], N + 3, caches)
        torch.cuda.synchronize()
    kinds = res["eager_step_kernels"] = cuda_kernels(prof)
    res["eager_step_kernel_ms"] = sum(v[0] for v in kinds.values())
    res["eager_step_launches"] = sum(v[1] for v in kinds.values())
    kinds = ("eager", "graph") + (("graph_tuned",) if tuned else ())
    for label in kinds[1:]:
        caches = model.new_caches(1, N + NEW)
        prefill(model, embeds, caches, **kw)
        static = [StaticKVCache.from_cache(c, -(-(L0 + NEW) // 256) * 256) for c in caches]
        t = time.perf_counter()
        step = GraphDecode(model, static, toks[0], N, 0, compile=label == "graph_tuned")
        res[f"{label}_build_s"] = time.perf_counter() - t
        res[f"{label}_ms"] = timed(lambda j: step(toks[j], N + j, j))
    for k in kinds:
        res[f"{k}_x_floor"] = res[f"{k}_ms"] / res["floor_ms"]
    print(f"{variant} decode: floor {res['floor_ms']:.2f} ms; " + ", ".join(f"{k} {res[k + '_ms']:.2f} ms "
          f"({res[k + '_x_floor']:.2f}x)" for k in kinds) +
          f"; eager step: {res['eager_step_kernel_ms']:.2f} ms of kernels in {res['eager_step_launches']} launches", flush=True)
    for k, (ms, n) in list(res["eager_step_kernels"].items())[:12]:
        print(f"    {ms:6.3f} ms x{n:<4d} {k[:100]}", flush=True)
    return res


FIRST = """
import json, sys, time, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
t0 = time.perf_counter()
from profile_gpu import random_model
from minivtp.flops import VICUNA_7B
from minivtp.generate import generate, decode_one_token, prefill
from minivtp.vtp import VideoSpan
model = random_model(VICUNA_7B)
embeds = torch.randn(1, {N}, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
torch.cuda.synchronize()
setup = time.perf_counter() - t0
video = VideoSpan({PREFIX}, {T}, {NV})

def question(fast):
    t = time.perf_counter()
    out = generate(model, embeds, {NEW}, video=video, alpha=0.1, layer=10, fast_decode=fast)
    total = time.perf_counter() - t
    return dict(total_s=total, prefill_s=out.prefill_s, decode_s=out.decode_s)

def stepwise():
    caches = model.new_caches(1, {N} + {NEW})
    t = time.perf_counter(); logits, _ = prefill(model, embeds, caches, video=video, alpha=0.1, layer=10)
    torch.cuda.synchronize(); times = [time.perf_counter() - t]
    tok = logits.argmax()
    for j in range({NEW} - 1):
        t = time.perf_counter(); tok = decode_one_token(model, tok, {N} + j, caches).argmax(); torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times

mode = {mode!r}
if mode.endswith("-cudnn"):  # as before: PyTorch free to pick cuDNN's attention for the eager decode's masked calls
    import minivtp.generate
    from torch.nn.attention import SDPBackend
    minivtp.generate.GROWING_SDPA.insert(0, SDPBackend.CUDNN_ATTENTION)
    mode = mode[: -len("-cudnn")]
res = dict(setup_s=setup)
if mode == "stepwise":
    res["first"] = stepwise(); res["second"] = stepwise()
else:
    res["questions"] = [question(mode == "graph") for _ in range(3)]
print(json.dumps(res))
"""


def first_question():
    res = {}
    for mode in ("eager", "eager-cudnn", "graph", "stepwise", "stepwise-cudnn"):
        code = FIRST.format(root=str(ROOT), bench=str(ROOT / "bench"), N=N, PREFIX=PREFIX, T=T, NV=NV, NEW=NEW, mode=mode)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        res[mode] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else dict(error=p.stderr[-1500:])
        r = res[mode]
        if "questions" in r:
            print(f"fresh process, {mode}: " + ", ".join(f"{q['total_s']:.2f} s (prefill {q['prefill_s']:.2f}, decode "
                  f"{q['decode_s']:.2f})" for q in r["questions"]), flush=True)
        elif "first" in r:
            f, s = r["first"], r["second"]
            print(f"fresh process, {mode}: prefill {f[0] * 1e3:.0f} / {s[0] * 1e3:.0f} ms; decode steps 1-5 "
                  f"{[round(x * 1e3) for x in f[1:6]]} / {[round(x * 1e3) for x in s[1:6]]} ms; median step "
                  f"{statistics.median(f[1:]) * 1e3:.1f} / {statistics.median(s[1:]) * 1e3:.1f} ms; sum "
                  f"{sum(f):.2f} / {sum(s):.2f} s", flush=True)
        else:
            print(f"fresh process, {mode}: error {r['error'][-400:]}", flush=True)
    return res


@torch.no_grad()
def matmuls(rows_list=(1, 335, 336, 384, 559, 576, 2399)):
    """Achieved bf16 TFLOP/s of one layer's projections at the row counts a pruned prefill runs."""
    shapes = {"q/k/v/o 4096->4096": (4096, 4096), "gate/up 4096->11008": (4096, 11008),
              "down 11008->4096": (11008, 4096), "q+k+v fused 4096->12288": (4096, 12288),
              "gate+up fused 4096->22016": (4096, 22016)}
    res = {}
    for rows in rows_list:
        for name, (k, n) in shapes.items():
            a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
            ms = cuda_ms(lambda: torch.nn.functional.linear(a, w), warmup=5, reps=20)
            res[f"{rows} {name}"] = dict(us=ms * 1e3, tflops=2 * rows * k * n / (ms / 1e3) / 1e12)
        print(f"matmuls at {rows} rows: " + ", ".join(f"{name.split()[0]} {res[f'{rows} {name}']['us']:.0f} us "
              f"({res[f'{rows} {name}']['tflops']:.0f} TF/s)" for name in shapes), flush=True)
    return res


@torch.no_grad()
def check_float32():
    """The fast path computes what the loop does: float32 (where rounding cannot flip a near-tie of a random model),
    72 greedy tokens through a FastDecoder (prefill tail graph + decode graph) against the eager path."""
    model = random_model(VICUNA_7B, dtype=torch.float32)
    embeds = torch.randn(1, N, VICUNA_7B.dim, device="cuda") * 0.02
    video = VideoSpan(PREFIX, T, NV)
    eager = {name: generate(model, embeds, NEW, video=video, method=method) for name, method in SETTINGS[1:]}
    t = time.perf_counter()
    prepare_fast(model)  # as eval runs on CUDA: fused projections, compiled blocks, graphs, the step compiled
    decoder = FastDecoder(model, compile=True)
    res = {}
    for name, method in SETTINGS[1:]:
        fast = [generate(model, embeds, NEW, video=video, method=method, fast_decode=decoder) for _ in range(2)]
        eager_ = eager[name]
        res[name] = dict(same_tokens=[f.tokens.tolist() == eager_.tokens.tolist() for f in fast],
                         logits_rel_err=max(((f.logits - eager_.logits).abs().max() / eager_.logits.abs().max()).item()
                                            for f in fast))
        print(f"float32 {name}: fused, compiled FastDecoder vs eager, same 72 tokens {res[name]['same_tokens']} (first "
              f"question, then one reusing the graphs), logits rel err {res[name]['logits_rel_err']:.1e}", flush=True)
    res["prepare_and_first_questions_s"] = time.perf_counter() - t
    del model, decoder
    torch.cuda.empty_cache()
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-first", action="store_true")
    p.add_argument("--only-check", action="store_true", help="only the float32 equality check")
    p.add_argument("--skip-plain", action="store_true", help="time only the compiled variants")
    p.add_argument("--autotune", action="store_true", help=f"also the blocks compiled with mode={AUTOTUNE!r}")
    args = p.parse_args()
    assert torch.cuda.is_available(), "bench/fast_path.py needs a CUDA GPU"
    args.out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__)
    t0 = time.perf_counter()
    res["check_float32"] = check_float32()
    if args.only_check:
        (args.out / "fast_path_check.json").write_text(json.dumps(res, indent=1))
        return
    if not args.skip_first:  # first, while this process has not touched the GPU much
        res["first_question"] = first_question()
    src = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    res["copy_bytes_per_s"] = 2 * src.numel() * 2 / (cuda_ms(lambda: dst.copy_(src), warmup=3, reps=10) / 1e3)
    del src, dst
    res["matmuls"] = matmuls()
    model = random_model(VICUNA_7B)
    embeds = torch.randn(1, N, VICUNA_7B.dim, device="cuda", dtype=torch.bfloat16) * 0.02
    # the model as it reads, then fused projections (answer's default on CUDA), then compiled blocks (eval's)
    variants = (("plain", lambda: None), ("fused q+k+v", model.fuse_qkv), ("fused+compiled", model.compile_blocks))
    if args.autotune:  # the blocks compiled again, letting Inductor time Triton matmuls against cuBLAS per shape
        variants += (("fused+autotuned", lambda: (torch._dynamo.reset(), model.compile_blocks(AUTOTUNE))),)
    for label, change in variants:
        t = time.perf_counter()
        change()
        if args.skip_plain and label in ("plain", "fused q+k+v"):
            continue
        res[f"prefill {label}"] = prefill_table(model, embeds, label)
        res[f"prefill {label}"]["setup_and_table_s"] = time.perf_counter() - t
        res[f"decode {label}"] = decode_table(model, embeds, res["copy_bytes_per_s"], label,
                                              tuned=label == "fused+compiled")  # eval's decode: FastDecoder(compile=True)
    res["total_s"] = time.perf_counter() - t0
    (args.out / "fast_path.json").write_text(json.dumps(res, indent=1))
    measured = [v for v, _ in variants if f"prefill {v}" in res]
    print("\n| setting | FLOPs ratio | " + " | ".join(f"{v} loop ms | (of ratio) | {v} graph tail ms | (of ratio) | rows to 64 ms "
                                                    f"| (of ratio)" for v in measured) + " |")
    print("| --- | --- |" + " --- | --- | --- | --- | --- | --- |" * len(measured))
    for name, _ in SETTINGS:
        cells = []
        for v in measured:
            a = res[f"prefill {v}"][name]
            cells += [f"{a['loop_ms']:.1f}", f"{a['loop_of_ratio']:.2f}", f"{a['graph_ms']:.1f}", f"{a['graph_of_ratio']:.2f}",
                      f"{a['graph64_ms']:.1f}", f"{a['graph64_of_ratio']:.2f}"]
        print(f"| {name} | {res[f'prefill {measured[0]}'][name]['flops_ratio']:.2f}x | " + " | ".join(cells) + " |")
    print(f"total {res['total_s']:.0f} s; wrote {args.out / 'fast_path.json'}")


if __name__ == "__main__":
    main()
