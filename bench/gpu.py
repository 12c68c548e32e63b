"""minivtp at real shape on one GPU, beside Hugging Face transformers. One run does the whole measurement.

    python bench/gpu.py --out DIR          # writes DIR/gpu.json, prints the table

Shape: Vicuna-7B (random bf16 weights; speed does not depend on their values), prompt = 35 system rows +
16 frames x 144 video rows (PLLaVA-7B) + 60 question rows = 2,399 rows, 72 generated tokens (Tab. 3).
Settings: no pruning, alpha in {0.2, 0.1} x M in {5, 10}.

Order of work: the machine's two ceilings (bf16 matmul rate, device copy bandwidth); a random Vicuna-7B
written by transformers as sharded safetensors; transformers' own prefill and decode on it; minivtp's load
of that directory (in a child process, for its peak host memory); then every setting through minivtp, eager
and with the CUDA-graph decode. Times are medians of repeats after warm-up, taken with CUDA events.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import weights  # noqa: E402
from minivtp.flops import VICUNA_7B, prefill_flops  # noqa: E402
from minivtp.model import StaticKVCache  # noqa: E402
from minivtp.generate import GraphDecode, decode_one_token, generate, prefill  # noqa: E402
from minivtp.vtp import VideoSpan  # noqa: E402

PREFIX, T, NV, NQ, NEW = 35, 16, 144, 60, 72
N = PREFIX + T * NV + NQ
SETTINGS = [("none", 1.0, None), ("a0.2 M5", 0.2, 5), ("a0.2 M10", 0.2, 10), ("a0.1 M5", 0.1, 5),
            ("a0.1 M10", 0.1, 10)]


def cuda_ms(fn, warmup=2, reps=5):
    """Median milliseconds of fn() over `reps` runs after `warmup`, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def ceilings():
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_ms(lambda: a @ b, warmup=3, reps=10)
    matmul = 2 * n**3 / (ms / 1e3)
    src = torch.randn(2**30, device="cuda", dtype=torch.bfloat16)  # 2 GiB
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), warmup=3, reps=10)
    copy = 2 * src.numel() * 2 / (ms / 1e3)  # bytes read + bytes written
    del a, b, src, dst
    torch.cuda.empty_cache()
    return matmul, copy


def hf_config():
    from transformers import LlamaConfig
    c = VICUNA_7B
    return LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
                       num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, attn_implementation="sdpa")


def build_hf():
    from transformers import LlamaForCausalLM
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(hf_config()).eval()
    torch.set_default_dtype(torch.float32)
    return model


@torch.no_grad()
def bench_hf(hf, tokens):
    from transformers import DynamicCache
    out = {}
    torch.cuda.reset_peak_memory_stats()
    out["prefill_ms"] = cuda_ms(lambda: hf(input_ids=tokens, use_cache=True, logits_to_keep=1))

    def run_decode():
        try:
            cache = DynamicCache(config=hf.config)
        except TypeError:  # older transformers
            cache = DynamicCache()
        logits = hf(input_ids=tokens, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tok = logits[:, -1].argmax(-1, keepdim=True)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(NEW - 1):
            logits = hf(input_ids=tok, past_key_values=cache, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / (NEW - 1)

    run_decode()
    out["decode_ms_per_token"] = statistics.median(run_decode() for _ in range(3))
    out["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


LOAD_CHILD = """
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
import weights
t0 = time.perf_counter()
model = weights.load({path!r}, dtype=torch.bfloat16, device="cuda")
torch.cuda.synchronize()
t = time.perf_counter() - t0
print(json.dumps(dict(load_s=t, peak_host_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      gpu_gb=torch.cuda.memory_allocated() / 1e9)))
"""


@torch.no_grad()
def bench_setting(model, embeds, alpha, layer, reps=5):
    video = None if layer is None else VideoSpan(PREFIX, T, NV)
    kw = dict(video=video, alpha=alpha, layer=layer or 1)
    L = model.cfg.n_layers

    def fresh():
        return model.new_caches(1, N + NEW)

    pools = [fresh() for _ in range(2)]
    i = [0]

    def run_prefill():
        i[0] += 1
        return prefill(model, embeds, pools[i[0] % 2], **kw)

    prefill_ms = cuda_ms(run_prefill, reps=reps)

    def decode(fast):
        caches = fresh()
        torch.cuda.reset_peak_memory_stats()
        logits, pruning = prefill(model, embeds, caches, **kw)
        cache_len = caches[0].length
        kv_used = sum(c.k[:, :, :cache_len].numel() + c.v[:, :, :cache_len].numel() for c in caches) * 2
        if fast:
            caches = [StaticKVCache.from_cache(c, cache_len + NEW) for c in caches]
        tokens = [logits.argmax()]
        step = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for j in range(NEW - 1):
            if j == 1:  # time from the second step: the first one builds the graph
                start.record()
            if fast:
                if step is None:
                    step = GraphDecode(model, caches, tokens[-1], N + j, j)
                logits = step(tokens[-1], N + j, j)
            else:
                logits = decode_one_token(model, tokens[-1], N + j, caches)
            tokens.append(logits.argmax())
        end.record()
        torch.cuda.synchronize()
        return dict(ms=start.elapsed_time(end) / (NEW - 2), cache_len=cache_len, kv_used_bytes=kv_used,
                    peak_gb=torch.cuda.max_memory_allocated() / 1e9, kept=0 if pruning is None else pruning.kept.numel())

    eager = [decode(False) for _ in range(2)][-1]
    fast = [decode(True) for _ in range(3)]
    flops = prefill_flops(model.cfg, PREFIX, T, NV, NQ, alpha=alpha, layer=layer or L)
    return dict(prefill_ms=prefill_ms, eager_decode_ms=eager["ms"], fast_decode_ms=statistics.median(f["ms"] for f in fast),
                cache_len=eager["cache_len"], kv_used_bytes=eager["kv_used_bytes"], peak_gb=eager["peak_gb"],
                kept=eager["kept"], flops=flops["flops_pruned"] if layer else flops["flops_full"])


@torch.no_grad()
def teacher_forced(model, embeds, tokens, fast, **kw):
    """Logits of every step when the given tokens are fed, eager or through the graph decode."""
    caches = model.new_caches(1, N + NEW)
    logits, _ = prefill(model, embeds.to(model.embed.weight.dtype), caches, **kw)
    L0 = caches[0].length
    if fast:
        caches = [StaticKVCache.from_cache(c, L0 + NEW) for c in caches]
    out, step = [logits], None
    for j, tok in enumerate(tokens[:-1]):
        if fast:
            if step is None:
                step = GraphDecode(model, caches, tok, N + j, j)
            out.append(step(tok, N + j, j))
        else:
            out.append(decode_one_token(model, tok, N + j, caches))
    return torch.stack(out).float()


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.no_grad()
def correctness(model, ckpt, tokens):
    """Equal tokens in float32 (where rounding cannot flip a near-tie), bf16 paths against float32."""
    model32 = weights.load(ckpt, dtype=torch.float32, device="cuda")
    e32 = model32.embed(tokens)
    video = VideoSpan(PREFIX, T, NV)
    out = {}
    plain = generate(model32, e32, NEW)
    a1 = generate(model32, e32, NEW, video=video, alpha=1.0, layer=10)
    out["fp32_alpha1_same_tokens_as_unpruned"] = a1.tokens.tolist() == plain.tokens.tolist()
    out["fp32_alpha1_logits_rel_err"] = rel(a1.logits, plain.logits)
    for name, alpha, layer in SETTINGS[1:]:
        kw = dict(video=video, alpha=alpha, layer=layer)
        eager = generate(model32, e32, NEW, **kw)
        fast = generate(model32, e32, NEW, fast_decode=True, **kw)
        ref = eager.logits.float()
        bf_eager = teacher_forced(model, e32, eager.tokens, False, **kw)
        bf_fast = teacher_forced(model, e32, eager.tokens, True, **kw)
        out[name] = dict(fp32_graph_same_tokens=fast.tokens.tolist() == eager.tokens.tolist(),
                         fp32_graph_logits_rel_err=rel(fast.logits, ref),
                         bf16_eager_vs_fp32=rel(bf_eager, ref), bf16_graph_vs_fp32=rel(bf_fast, ref),
                         bf16_graph_vs_bf16_eager=rel(bf_fast, bf_eager))
        print(f"check {name}: {out[name]}", flush=True)
    del model32
    torch.cuda.empty_cache()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--ckpt", default=None, help="where to write the random checkpoint (default: a temp dir)")
    args = p.parse_args()
    assert torch.cuda.is_available(), "bench/gpu.py needs a CUDA GPU"
    torch.backends.cuda.matmul.allow_tf32 = False
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, shape=dict(prefix=PREFIX, frames=T,
               tokens_per_frame=NV, question=NQ, prompt_rows=N, new_tokens=NEW))
    t0 = time.perf_counter()
    res["matmul_flops"], res["copy_bytes_per_s"] = ceilings()
    print(f"ceilings: bf16 matmul {res['matmul_flops'] / 1e12:.0f} TFLOP/s, copy {res['copy_bytes_per_s'] / 1e12:.2f} TB/s",
          flush=True)

    ckpt = Path(args.ckpt or tempfile.mkdtemp(prefix="vicuna7b-random-"))
    torch.manual_seed(0)
    hf = build_hf()
    t = time.perf_counter()
    hf.save_pretrained(ckpt, max_shard_size="4GB")
    res["save_s"] = time.perf_counter() - t
    print(f"wrote {ckpt} in {res['save_s']:.0f} s: {sorted(x.name for x in ckpt.iterdir())}", flush=True)

    tokens = torch.randint(0, 32000, (1, N), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    res["hf"] = bench_hf(hf, tokens)
    print(f"transformers: prefill {res['hf']['prefill_ms']:.1f} ms, decode {res['hf']['decode_ms_per_token']:.2f} ms/token",
          flush=True)
    with torch.no_grad():
        hf_logits = hf(input_ids=tokens).logits[0].float().cpu()  # (N, V)
    del hf
    torch.cuda.empty_cache()

    child = subprocess.run([sys.executable, "-c", LOAD_CHILD.format(root=str(ROOT), path=str(ckpt))],
                           capture_output=True, text=True)
    res["load"] = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else dict(error=child.stderr[-2000:])
    print(f"weights.load: {res['load']}", flush=True)

    model = weights.load(ckpt, dtype=torch.bfloat16, device="cuda")
    weight_bytes = sum(p.numel() for p in model.parameters()) * 2 - model.embed.weight.numel() * 2  # read per token
    res["weight_bytes_per_token"] = weight_bytes
    with torch.no_grad():
        ours = model(tokens)[0].cpu()  # (N, V) float32 logits from bf16 weights
    err = rel(ours, hf_logits)
    agree = (ours.argmax(-1) == hf_logits.argmax(-1)).float().mean().item()
    res["vs_transformers"] = dict(rel_max_err=err, argmax_agreement=agree)
    print(f"logits vs transformers (bf16 both): rel max err {err:.2e}, argmax agreement {agree:.4f}", flush=True)
    del hf_logits, ours

    embeds = model.embed(tokens)
    res["checks"] = correctness(model, ckpt, tokens)
    res["settings"], res["settings_compiled"] = {}, {}
    for label in ("settings", "settings_compiled"):
        if label == "settings_compiled":
            t = time.perf_counter()
            model.compile_pointwise()  # fused norms, RoPE and SwiGLU from here on
            bench_setting(model, embeds, 0.1, 10, reps=1)  # compile for both prompt shapes and decode
            res["compile_s"] = time.perf_counter() - t
            print(f"compile_pointwise + first run: {res['compile_s']:.0f} s", flush=True)
        for name, alpha, layer in SETTINGS:
            r = bench_setting(model, embeds, alpha, layer)
            r["prefill_floor_ms"] = r["flops"] / res["matmul_flops"] * 1e3
            kv_read = r["cache_len"] * model.cfg.n_layers * 2 * model.cfg.dim * 2
            r["decode_floor_ms"] = (weight_bytes + kv_read) / res["copy_bytes_per_s"] * 1e3
            res[label][name] = r
            print(f"{label} {name}: prefill {r['prefill_ms']:.1f} ms (floor {r['prefill_floor_ms']:.1f}), decode eager "
                  f"{r['eager_decode_ms']:.2f} / graph {r['fast_decode_ms']:.2f} ms/token (floor {r['decode_floor_ms']:.2f}), "
                  f"cache {r['cache_len']} rows", flush=True)
    res["total_s"] = time.perf_counter() - t0

    hfr = res["hf"]
    for label in ("settings", "settings_compiled"):
        base = res[label]["none"]
        print(f"\n{label}:\n| setting | prefill ms | floor | x floor | speed-up (FLOPs ratio) | eager decode ms/tok | "
              "graph ms/tok | floor | x floor | KV rows | KV / unpruned | peak GB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in res[label].items():
            print(f"| {name} | {r['prefill_ms']:.1f} | {r['prefill_floor_ms']:.1f} | {r['prefill_ms'] / r['prefill_floor_ms']:.2f} | "
                  f"{base['prefill_ms'] / r['prefill_ms']:.2f}x ({base['flops'] / r['flops']:.2f}x) | {r['eager_decode_ms']:.2f} | "
                  f"{r['fast_decode_ms']:.2f} | {r['decode_floor_ms']:.2f} | {r['fast_decode_ms'] / r['decode_floor_ms']:.2f} | "
                  f"{r['cache_len']} | {r['kv_used_bytes'] / base['kv_used_bytes']:.3f} | {r['peak_gb']:.1f} |")
        print(f"| transformers | {hfr['prefill_ms']:.1f} | | | | {hfr['decode_ms_per_token']:.2f} | | | | | | {hfr['peak_gb']:.1f} |")
        print(f"graph decode (unpruned) vs transformers' eager decode: {hfr['decode_ms_per_token'] / base['fast_decode_ms']:.1f}x")
    print(f"checks: {json.dumps(res['checks'])}")
    print(f"total {res['total_s']:.0f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
