"""Where the time goes at Vicuna-7B shape: a profile of prefill and decode, no checkpoint, no peer.

    python bench/profile_gpu.py

Builds the model on the GPU directly (meta device, then random bf16 tensors made on the GPU: no host copy),
profiles prefill unpruned and pruned, and compares the decode paths (eager, CUDA graph, torch.compile +
CUDA graph) teacher-forced on the same tokens, so their logits can be compared step by step.
"""

import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from minivtp.flops import VICUNA_7B  # noqa: E402
from minivtp.model import StaticKVCache  # noqa: E402
from minivtp.generate import GraphDecode, decode_one_token, prefill  # noqa: E402
from minivtp.model import Transformer  # noqa: E402
from minivtp.vtp import VideoSpan  # noqa: E402
from gpu import cuda_ms  # noqa: E402  (bench/gpu.py)
from weights import set_parameter  # noqa: E402

PREFIX, T, NV, NQ, NEW = 35, 16, 144, 60, 72
N = PREFIX + T * NV + NQ


def random_model(cfg, device="cuda", dtype=torch.bfloat16, std=0.02, seed=0):
    """A Transformer whose weights are made on `device` directly: built on meta, each parameter drawn in place."""
    g = torch.Generator(device).manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(cfg)
    for name, p in list(model.named_parameters()):
        if "norm" in name:
            t = torch.ones(p.shape, device=device, dtype=dtype)
        else:
            t = torch.randn(p.shape, device=device, dtype=dtype, generator=g) * std
        set_parameter(model, name, t)
    if cfg.tie_embeddings:
        model.output.weight = model.embed.weight
    return model.eval()


def cuda_kernels(prof):
    """A torch.profiler run's CUDA kernels by full name (cut names would collide): {name: (ms, launches)},
    the slowest first."""
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {e.key: (e.self_device_time_total / 1e3, e.count)
            for e in sorted(events, key=lambda e: -e.self_device_time_total)}


def kernel_summary(prof, top=8):
    kernels = cuda_kernels(prof)
    lines = [f"    {ms:8.2f} ms  x{n:<5d} {name[:90]}" for name, (ms, n) in list(kernels.items())[:top]]
    return sum(ms for ms, _ in kernels.values()), sum(n for _, n in kernels.values()), "\n".join(lines)


@torch.no_grad()
def main():
    model = random_model(VICUNA_7B)
    embeds = torch.randn(1, N, VICUNA_7B.dim, device="cuda", dtype=torch.bfloat16) * 0.02
    video = VideoSpan(PREFIX, T, NV)
    for name, kw in (("none", dict()), ("a0.1 M5", dict(video=video, alpha=0.1, layer=5)),
                     ("a0.1 M10", dict(video=video, alpha=0.1, layer=10))):
        caches = model.new_caches(1, N + NEW)
        ms = cuda_ms(lambda: prefill(model, embeds, caches, **kw))
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            prefill(model, embeds, caches, **kw)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t) * 1e3
        gpu, count, top = kernel_summary(prof)
        print(f"prefill {name}: {ms:.1f} ms (events); profiled wall {wall:.1f} ms, kernels {gpu:.1f} ms in {count} launches\n{top}",
              flush=True)

    # decode, teacher-forced on the eager path's greedy tokens
    kw = dict(video=video, alpha=0.1, layer=10)
    caches = model.new_caches(1, N + NEW)
    logits, _ = prefill(model, embeds, caches, **kw)
    L0 = caches[0].length
    toks, ref = [logits.argmax()], []
    t = time.perf_counter()
    for j in range(NEW - 1):
        out = decode_one_token(model, toks[-1], N + j, caches)
        ref.append(out)
        toks.append(out.argmax())
    torch.cuda.synchronize()
    print(f"eager decode: {(time.perf_counter() - t) * 1e3 / (NEW - 1):.2f} ms/token", flush=True)
    for label, compiled in (("graph", False), ("compile+graph", True)):
        caches = model.new_caches(1, N + NEW)
        prefill(model, embeds, caches, **kw)
        caches = [StaticKVCache.from_cache(c, L0 + NEW) for c in caches]
        t = time.perf_counter()
        step = GraphDecode(model, caches, toks[0], N, 0, compile=compiled)
        build = time.perf_counter() - t
        outs = []
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for j in range(NEW - 1):
            if j == 1:
                s.record()
            outs.append(step(toks[j], N + j, j))
        e.record()
        torch.cuda.synchronize()
        err = max(((o - r).abs().max() / r.abs().max()).item() for o, r in zip(outs, ref))
        same = sum(int(o.argmax() == r.argmax()) for o, r in zip(outs, ref))
        print(f"{label}: build {build:.1f} s, {s.elapsed_time(e) / (NEW - 2):.2f} ms/token, teacher-forced logits rel "
              f"max err {err:.2e}, same argmax {same}/{NEW - 1}", flush=True)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step(toks[5], N + 5, 5)
            torch.cuda.synchronize()
        gpu, count, top = kernel_summary(prof, top=6)
        print(f"  one step: kernels {gpu:.2f} ms in {count} launches\n{top}", flush=True)


if __name__ == "__main__":
    main()
