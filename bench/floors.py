"""Speed against the floors at Vicuna-7B shape on one GPU: each decode path against the bandwidth floor, the pruned
prefill against the FLOPs ratio, and a float32 check that the fast path gives the readable path's tokens.

    python -m bench.floors --out OUT                       # everything, OUT/floors.json
    python -m bench.floors --out OUT --parts check         # only the float32 token check
    python -m bench.floors --out OUT --variants compiled   # only eval's path (prefill and decode)
    python -m bench.floors --out OUT --tiny                # the same code at a tiny shape, on the CPU
    python -m bench.floors --out OUT --parts batch         # many questions at once (eval --batch-size)

Parts (--parts):
  check    float32 (where rounding cannot flip a near-tie of a random model): 72 greedy tokens through the fast
           path as eval prepares it on CUDA (fast.prepare, FastDecoder(step="tuned")) against the eager path on the
           model as loaded, in the paper's four settings, on a first question and a second reusing the graphs
  decode   the bandwidth floor of a decode step: the bytes it must read (every weight but the embedding table,
           once, and the KV rows) at the copy rate measured here (a 2 GiB device copy, bytes read + written); then
           ms per token after an alpha 0.1 M 10 prefill, teacher-forced on the same 72 tokens, CUDA events, and
           the profiler's kernels of one step, for each decoder:
             eager        the readable step (fast.EagerOnGPU), model as loaded
             graph        a FastDecoder's CUDA graph (bucket 256: eval's `--no-compile`, on the fused model)
             answer_no_compile  `answer --no-compile`: FastDecoder(bucket=1, prefill_bucket=0), exact sizes, fused,
                          nothing compiled (`answer`'s default until 2026-12-01)
             answer       `answer`'s default: the same with triton=True, the step's element-wise work in three
                          Triton kernels (fast.triton_step), nothing traced by torch
             answer_tuned the same with compile=True instead: the autotuned block, its cache length symbolic
             graph_tuned  eval's default: FastDecoder(step="tuned"), the step through the autotuned block
  released the prefill of LLM-VTP's two rules on the model as loaded, in the paper's PLLaVA settings (alpha/M
           0.1/10, 0.2/10, 0.2/5): the paper's, the authors' released code's (Method(variant="released"): q and k
           before RoPE, no causal mask, so the keys are projected again from layer M's input and every question
           row's softmax runs over all N keys; int(alpha * Nv) a frame) and "released, ceil count" (the paper's
           rows, only the scoring differs); the whole prefill (the loop) and layer M's scoring alone (fast and
           literal), each as a ratio to the paper's rule in the same run
  prefill  the 2,399-row prefill unpruned and in the paper's four settings (alpha 0.2 / 0.1, M 5 / 10), median of
           --reps (7) after 2 warm-ups, CUDA events: the loop (model.forward_layers: every layer from Python) and the
           graph tail (a FastDecoder's PrefillTail, rows after M padded to 16); speed-up against the unpruned
           prefill of the same column, beside the FLOPs ratio (minivtp.flops) and the fraction of it reached
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
           (attention and gemm need no model and no variant: what is left of a step besides its weights)
  batch    many questions at once (minivtp/fast/batch.py, eval --batch-size): for unpruned and LLM-VTP a0.1 M10 / a0.2 M5,
           at B = 1, 4, 8, 16 and the largest B that fits, 5- and 72-token answers: questions per second (B random
           prompts, question rows 60..72 so the caches are padded, each prefilled alone through eval's FastDecoder,
           then batch.generate_many's shared steps in a CUDA graph), decode ms per step, the step's floor (the
           weights once + the B caches' slots it reads, and + only the rows held), peak memory; the KV bytes per
           question pruned and unpruned and so the largest B that fits in this GPU's memory with and without
           LLM-VTP; with --batch-compiled the compiled step (BatchDecoder(compile=True)) at B = 8; transformers'
           generate on the LLM alone with its static cache (compiled by transformers), B prompts of the unpruned
           rows and of the rows LLM-VTP a0.1 M10 keeps, at the same B, within --batch-budget seconds (a shape not
           reached is one printed line)
Variants (--variants), one bf16 model changed step by step as answer and eval change it:
  plain     the model as loaded                                   decoders: eager
  fused     fast.prepare(compile=False): q+k+v and gate+up fused (answer; eval --no-compile)
                                              decoders: graph, answer_no_compile, answer, answer_tuned
  compiled  fast.prepare: blocks compiled too (eval's default)    decoders: graph, graph_tuned
Random weights (bench.common.randomize): speed does not depend on their values. Variant and decoder names are those
of bench/fast_path.py before it (plain, fused q+k+v, fused+compiled; eager, graph, graph_tuned), but for the fused
variant: gate+up is fused too since 2026-12-01.
"""

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench import common
from bench.common import LLM_VTP, PAPER_SETTINGS
from minivtp import fast, vtp
from minivtp.fast import batch
from minivtp.flops import prefill_flops
from minivtp.generate import Method, generate, prefill

PARTS = ("check", "decode", "prefill", "released", "batch", "attention", "gemm")
VARIANTS = {"plain": "plain", "fused": "fused q+k+v, gate+up", "compiled": "fused+compiled"}
DECODERS = {"plain": ("eager",), "fused": ("graph", "answer_no_compile", "answer", "answer_tuned"),
            "compiled": ("graph", "graph_tuned")}


def rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def new_tokens(s) -> int:
    return 72 if not s.tiny else 8


@torch.no_grad()
def check_float32(s):
    """The fast path computes what the readable one does, in float32: the same greedy tokens, nearly the same logits."""
    n = new_tokens(s)
    model = common.random_llm(s, dtype=torch.float32)
    embeds = common.random_embeds(s, s.rows).float()
    settings = {k: m for k, m in PAPER_SETTINGS.items() if m is not None}
    eager = {name: generate(model, embeds, n, video=s.video, method=m, decoder=decoder_for("eager", model))
             for name, m in settings.items()}
    compiled = common.cuda(s)
    if not compiled:
        common.skip("the compile in the float32 check", "eval compiles only on CUDA; checking the uncompiled fast path")
    t = time.perf_counter()
    fast.prepare(model, compile=compiled)  # as eval prepares a model on CUDA
    decoder = fast.FastDecoder(model, step="tuned" if compiled else "plain")
    res = dict(compiled=compiled)
    for name, m in settings.items():
        runs = [generate(model, embeds, n, video=s.video, method=m, decoder=decoder) for _ in range(2)]
        ref = eager[name]
        res[name] = dict(same_tokens=[r.tokens.tolist() == ref.tokens.tolist() for r in runs],
                         logits_rel_err=max(rel(r.logits, ref.logits) for r in runs))
        print(f"float32 {name}: {'compiled ' if compiled else ''}FastDecoder vs eager, same {n} tokens "
              f"{res[name]['same_tokens']} (first question, then one reusing the graphs), logits rel err "
              f"{res[name]['logits_rel_err']:.1e}", flush=True)
    res["all_same_tokens"] = all(all(res[k]["same_tokens"]) for k in settings)
    res["prepare_and_questions_s"] = time.perf_counter() - t
    del model, decoder
    torch._dynamo.reset()  # the bf16 model below compiles afresh, with torch's recompile limit to itself
    if common.cuda(s):
        torch.cuda.empty_cache()
    return res


def copy_rate(s) -> float:
    """Bytes per second of a device copy (read + written): what a decode step's weight reads can reach at best."""
    n = 2**30 if common.cuda(s) else 2**24  # 2 GiB of bf16 on a GPU; 32 MiB on a CPU, only to run the code
    src = torch.randn(n, device=s.device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = common.median_ms(lambda: dst.copy_(src), s.device, warmup=3, reps=10)  # both freed on return
    return 2 * n * 2 / (ms / 1e3)


def weight_bytes(model) -> int:
    """What a decode step reads of the weights: all of them once, but the embedding table (one row of it)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) - \
        model.embed.weight.numel() * model.embed.weight.element_size()


def decoder_for(name, model):
    if name == "eager":
        return fast.EagerOnGPU(model) if model.embed.weight.is_cuda else None
    if name == "graph":
        return fast.FastDecoder(model)
    if name == "answer_no_compile":  # as answer makes it with --no-compile (fast.decoder_for)
        return fast.FastDecoder(model, bucket=1, prefill_bucket=0)
    cuda = model.embed.weight.is_cuda  # Triton's kernels and the compile: on CUDA only
    if name == "answer":  # and without
        return fast.FastDecoder(model, bucket=1, prefill_bucket=0, step="triton" if cuda else "plain")
    if name == "answer_tuned":
        return fast.FastDecoder(model, bucket=1, prefill_bucket=0, step="tuned" if cuda else "plain")
    return fast.FastDecoder(model, step="tuned")  # graph_tuned: eval's


@torch.no_grad()
def decode_table(model, s, embeds, tokens, rate, variant, decoders):
    res = {}
    for name in decoders:
        caches = model.new_caches(1, s.rows + len(tokens))
        prefill(model, embeds, caches, video=s.video, method=LLM_VTP)
        kv = sum(c.length for c in caches) * 2 * s.text.n_kv_heads * s.text.head_dim * embeds.element_size()
        res["floor_ms"] = (weight_bytes(model) + kv) / rate * 1e3
        r = common.decode_ms(model, caches, tokens, s.rows, decoder_for(name, model), profile=True)
        res[f"{name}_ms"], res[f"{name}_first_step_s"] = r["ms"], r["first_step_s"]
        res[f"{name}_x_floor"] = r["ms"] / res["floor_ms"]
        if r["profile"]:
            res[f"{name}_step_kernels"] = r["profile"]["kernels"]
            res[f"{name}_step_kernel_ms"] = r["profile"]["kernel_ms"]
            res[f"{name}_step_launches"] = r["profile"]["launches"]
    print(f"{variant} decode: floor {res['floor_ms']:.2f} ms; " + ", ".join(
        f"{k} {res[k + '_ms']:.2f} ms ({res[k + '_x_floor']:.2f}x; first step {res[k + '_first_step_s']:.1f} s)"
        for k in decoders), flush=True)
    for k in decoders:
        if f"{k}_step_kernels" in res:
            print(f"  {k} step: {res[f'{k}_step_kernel_ms']:.2f} ms of kernels in {res[f'{k}_step_launches']} launches",
                  flush=True)
            common.print_kernels(dict(kernels=res[f"{k}_step_kernels"]), top=8)
    return res


@torch.no_grad()
def prefill_table(model, s, embeds, variant, reps):
    decoder = fast.FastDecoder(model)  # rows after layer M padded to a multiple of 16: the default
    rows = {}
    for name, method in PAPER_SETTINGS.items():
        loop_ms, ref = common.prefill_ms(model, embeds, s.video, method, reps=reps)
        graph_ms, got = common.prefill_ms(model, embeds, s.video, method, decoder, reps=reps)
        f = prefill_flops(model.cfg, s.prefix, s.frames, s.nv, s.question, alpha=method.alpha if method else 1.0,
                          layer=method.layer if method else model.cfg.n_layers)
        rows[name] = dict(loop_ms=loop_ms, graph_ms=graph_ms, flops=f["flops_pruned"] if method else f["flops_full"],
                          logits_rel_err_graph_vs_loop=rel(got, ref))
        print(f"{variant} prefill {name}: loop {loop_ms:.1f} ms, graph tail {graph_ms:.1f} ms, "
              f"rel err {rows[name]['logits_rel_err_graph_vs_loop']:.1e}", flush=True)
    base = rows["none"]
    for r in rows.values():
        r["flops_ratio"] = base["flops"] / r["flops"]
        for k in ("loop", "graph"):
            r[f"{k}_speedup"] = base[f"{k}_ms"] / r[f"{k}_ms"]
            r[f"{k}_of_ratio"] = r[f"{k}_speedup"] / r["flops_ratio"]
    return rows


def summary(res):
    dec = {v: res[f"decode {v}"] for v in VARIANTS.values() if f"decode {v}" in res}
    if dec:
        print("\n| variant | decoder | ms/token | floor ms | x floor | first step s | kernels in one step |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
        for v, r in dec.items():
            for k in ("eager", "graph", "answer_no_compile", "answer", "answer_tuned", "graph_tuned"):
                if f"{k}_ms" in r:
                    launches = r.get(f"{k}_step_launches")
                    print(f"| {v} | {k} | {r[f'{k}_ms']:.2f} | {r['floor_ms']:.2f} | {r[f'{k}_x_floor']:.2f} | "
                          f"{r[f'{k}_first_step_s']:.1f} | {'' if launches is None else launches} |")
    pre = {v: res[f"prefill {v}"] for v in VARIANTS.values() if f"prefill {v}" in res}
    if pre:
        print("\n| setting | FLOPs ratio | " + " | ".join(f"{v} loop ms (of ratio) | {v} graph tail ms (of ratio)"
                                                        for v in pre) + " |")
        print("| --- | --- |" + " --- | --- |" * len(pre))
        for name in PAPER_SETTINGS:
            cells = [f"{r[name]['loop_ms']:.1f} ({r[name]['loop_of_ratio']:.2f}) | "
                     f"{r[name]['graph_ms']:.1f} ({r[name]['graph_of_ratio']:.2f})" for r in pre.values()]
            print(f"| {name} | {next(iter(pre.values()))[name]['flops_ratio']:.2f}x | " + " | ".join(cells) + " |")
    if "check_float32" in res:
        print(f"\nfloat32 check: the fast path gives the eager tokens in every setting: "
              f"{res['check_float32']['all_same_tokens']}")


RELEASED_RULES = {"paper": dict(variant="paper"), "released": dict(variant="released"),
                  "released, ceil count": dict(variant="released", count="ceil")}
RELEASED_SETTINGS = ((0.1, 10), (0.2, 10), (0.2, 5))  # (alpha, M): the paper's PLLaVA settings (Sec. 4.3)


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


def released_table(s, reps: int) -> dict:
    """The "released" part: {"a{alpha} M{M} {rule}": prefill ms, kept tokens, scoring ms (fast, literal)}."""
    model, embeds, video = common.random_llm(s), common.random_embeds(s, s.rows), s.video
    runs = {}
    for alpha, M in RELEASED_SETTINGS:
        for rule, switches in RELEASED_RULES.items():
            method = Method(alpha=alpha, layer=M, **switches)
            ms, _ = common.prefill_ms(model, embeds, video, method, reps=reps)
            with torch.no_grad():  # what the rule kept, from one prefill of its own
                kept = prefill(model, embeds, model.new_caches(1, s.rows), video, method)[1].kept.numel()
            row = dict(prefill_ms=ms, kept=kept, scoring_ms={sc: scoring_ms(model, embeds, video, method, sc, reps)
                                                             for sc in ("fast", "literal")})
            runs[f"a{alpha} M{M} {rule}"] = row
            base = runs[f"a{alpha} M{M} paper"]
            print(f"alpha {alpha} M {M:2d}  {rule:20s}  prefill {ms:9.2f} ms ({ms / base['prefill_ms']:5.3f}x the "
                  f"paper's)  scoring at M: fast {row['scoring_ms']['fast']:8.3f} ms "
                  f"({row['scoring_ms']['fast'] / base['scoring_ms']['fast']:5.2f}x), literal "
                  f"{row['scoring_ms']['literal']:8.3f} ms  kept {kept} video tokens", flush=True)
    return dict(runs=runs)


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


BATCH_SETTINGS = {"unpruned": None, "a0.1 M10": Method(alpha=0.1, layer=10), "a0.2 M5": Method(alpha=0.2, layer=5)}


def batch_prompts(s, n: int, new_tokens: int, pruned: bool = True):
    """n prompts of the bench's shape, random rows; question rows s.question + 0, 4, 8, 12 in turn. Unpruned: no
    video span (as eval asks without a method), so nothing is scored."""
    extra = (0, 4, 8, 12) if not s.tiny else (0, 1, 2, 3)
    return [batch.Question(common.random_embeds(s, s.rows + extra[i % 4], seed=i), s.video if pruned else None,
                         new_tokens) for i in range(n)]


def kv_row_bytes(s) -> int:
    """K and V of one row in every layer."""
    return 2 * s.text.n_layers * s.text.n_kv_heads * s.text.head_dim * torch.finfo(s.dtype).bits // 8


@torch.no_grad()
def batch_run(model, s, method, B, n, decoder, bdec, rate, reps):
    """One (setting, B, answer length) cell: questions/s, decode ms/step, floors, peak memory, padding."""
    prompts = batch_prompts(s, B, n, pruned=method is not None)
    batch.generate_many(model, prompts, method, decoder=decoder, batch_decoder=bdec)  # captures, warms
    if common.cuda(s):
        torch.cuda.reset_peak_memory_stats()
    walls, decode = [], []
    for _ in range(reps):
        t = common.clock(s.device)
        outs = batch.generate_many(model, prompts, method, decoder=decoder, batch_decoder=bdec)
        walls.append(common.clock(s.device) - t)
        decode.append(outs[0].decode_s * B / max(1, n - 1))  # the shared steps' wall-clock, per step
    wall, step_s = sorted(walls)[len(walls) // 2], sorted(decode)[len(decode) // 2]
    held = [o.cache_len + n for o in outs]  # rows each question holds at its last step (LLM-VTP: every layer alike)
    slots = sum(bdec.graphs[B].sizes) / len(bdec.graphs[B].sizes) * B  # rows the step reads, padding included
    row_bytes = kv_row_bytes(s) / s.text.n_layers  # one layer's K and V of a row
    w = weight_bytes(model)
    res = dict(questions_per_s=B / wall, wall_s=wall, decode_ms_per_step=step_s * 1e3,
               prefill_s_per_question=sum(o.prefill_s for o in outs) / B,
               floor_ms=(w + slots * row_bytes * s.text.n_layers) / rate * 1e3,
               floor_held_ms=(w + sum(held) * kv_row_bytes(s)) / rate * 1e3,
               kv_rows_held=sum(held), kv_slots_read=slots, padding=1 - sum(held) / slots,
               peak_gb=torch.cuda.max_memory_allocated() / 1e9 if common.cuda(s) else None)
    res["x_floor"] = res["decode_ms_per_step"] / res["floor_ms"]
    return res


@torch.no_grad()
def hf_batch(s, rows_of, sizes, budget_s, res):
    """transformers' generate on the LLM alone, B equal prompts of `rows` rows, its static cache (transformers
    compiles its decode step for it), as many cells as fit in budget_s; the first run of a shape (its compile) is
    timed apart."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return common.skip("transformers' batched generate", "transformers is not installed")
    _, llm, _ = common.hf_models(*common.config_dicts(s), s.device, s.dtype, init=False)
    common.randomize(llm)
    static = common.cuda(s)  # a CPU compiles for minutes: there its default cache, only to run the code
    if not static:
        common.skip("transformers' static cache", "it compiles its step: minutes on a CPU; its default cache here")
    gen = dict(cache_implementation="static") if static else {}
    t_end = time.perf_counter() + budget_s
    for n in reversed(s.new_tokens[-1:] if s.tiny else s.new_tokens):  # 72 tokens first: the decode-bound case
        for kind, rows in rows_of.items():
            for B in sizes:
                key = f"transformers {kind} | B {B} | {n}"
                if time.perf_counter() > t_end:
                    common.skip(key, f"past --batch-budget {budget_s:.0f} s")
                    continue
                embeds = torch.cat([common.random_embeds(s, rows, seed=i) for i in range(B)])  # (B, rows, C)

                def one():
                    t = common.clock(s.device)
                    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                    out = llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, pad_token_id=0, **gen)
                    assert out.shape == (B, n), out.shape
                    return common.clock(s.device) - t

                try:
                    first = one()
                    wall = min(one() for _ in range(1 if s.tiny else 2))
                except Exception as e:  # out of memory, or a compile that fails here: a result too
                    res[key] = dict(error=repr(e)[:300])
                    print(f"{key}: failed {e!r}"[:300], flush=True)
                    if common.cuda(s):
                        torch.cuda.empty_cache()
                    continue
                res[key] = dict(questions_per_s=B / wall, wall_s=wall, first_s=first, prompt_rows=rows)
                print(f"{key}: {B / wall:.2f} questions/s ({wall:.3f} s; first {first:.1f} s)", flush=True)


@torch.no_grad()
def agreement(model, s, decoder, bdec, B: int) -> dict:
    """How many of B answers (LLM-VTP a0.1 M10, the longest answer) a batch gives as generate gives them one at a
    time with eval's decoders, and where the first that differ part. In float32 (the CPU) all should agree; in
    bf16 a batch's products round in another order than one row's, and a near-tie of a random model may flip."""
    method, n = BATCH_SETTINGS["a0.1 M10"], max(s.new_tokens)
    prompts = batch_prompts(s, B, n)
    many = batch.generate_many(model, prompts, method, decoder=decoder, batch_decoder=bdec)
    one_decoder = fast.FastDecoder(model) if common.cuda(s) else None
    same, first_diff = 0, []
    for p, got in zip(prompts, many):
        want = generate(model, p.embeds, n, video=p.video, method=method, decoder=one_decoder).tokens.tolist()
        same += got.tokens.tolist() == want
        diff = next((i for i, (a, b) in enumerate(zip(got.tokens.tolist(), want)) if a != b), None)
        if diff is not None:
            first_diff.append(diff)
    print(f"batch agreement, a0.1 M10, B {B}, {n} tokens, {str(s.dtype).removeprefix('torch.')}: {same} of {B} "
          f"answers as one at a time" + (f"; the others part at steps {first_diff}" if first_diff else ""), flush=True)
    return dict(batch=B, new_tokens=n, same=same, first_differing_step=first_diff, dtype=str(s.dtype))


def batch_table(s, rate, reps: int, budget_s: float, compiled: bool = False) -> dict:
    """The "batch" part (see the module's docstring)."""
    res = dict(copy_bytes_per_s=rate)
    model = common.random_llm(s)
    fast.prepare(model, compile=False)  # fused (eval --no-compile): the prefill tail's graphs, no compile time
    decoder = fast.FastDecoder(model) if common.cuda(s) else None  # the prefill eval runs (its graph tails)
    bdec = batch.BatchDecoder(model, bucket=16 if s.tiny else 32)  # eval's bucket at full size
    w = weight_bytes(model)
    res["weight_bytes_per_step"] = w
    sizes = (1, 4, 8, 16) if not s.tiny else (1, 3)
    total = torch.cuda.get_device_properties(0).total_memory if common.cuda(s) else None
    kept = {}
    for name, method in BATCH_SETTINGS.items():
        with torch.no_grad():  # rows one question keeps: prefill alone
            p = batch_prompts(s, 1, 1)[0]
            caches = model.new_caches(1, s.rows + 1)
            prefill(model, p.embeds, caches, s.video if method else None, method or Method(layer=1))
            kept[name] = caches[0].length
        per_q = (kept[name] + max(s.new_tokens)) * kv_row_bytes(s)
        # the largest B: the free memory after the weights over what a question holds in the batch's caches (its
        # padded rows) plus the copy of its pruned rows until the step takes them (generate_many); 20% kept back for
        # the prompts' embeddings, the logits kept (B x new tokens x V float32) and the prefill's activations
        largest = int(0.8 * (total - w) // (2 * per_q)) if total else None
        res[f"kv {name}"] = dict(rows=kept[name], kv_bytes_per_question=per_q, largest_batch_estimate=largest)
        print(f"batch {name}: {kept[name]} rows a question, {per_q / 1e9:.3f} GB of KV with {max(s.new_tokens)} new "
              f"tokens" + (f"; the largest B that fits about {largest}" if largest else ""), flush=True)
        run_sizes = sizes + ((largest,) if largest and largest > sizes[-1] else ())
        for B in run_sizes:
            bdec.graphs.clear()  # the last B's caches and graph go before this B's are made
            if common.cuda(s):
                torch.cuda.empty_cache()
            for n in s.new_tokens:
                key = f"{name} | B {B} | {n}"
                try:
                    r = res[key] = batch_run(model, s, method, B, n, decoder, bdec, rate, 1 if B > 16 else reps)
                except torch.cuda.OutOfMemoryError as e:
                    res[key] = dict(error=repr(e)[:300])
                    print(f"batch {key}: out of memory", flush=True)
                    bdec.graphs.clear()
                    torch.cuda.empty_cache()
                    continue
                base = res.get(f"{name} | B 1 | {n}")
                gain = f" ({r['questions_per_s'] / base['questions_per_s']:.2f}x B 1)" if base and B > 1 else ""
                print(f"batch {key}: {r['questions_per_s']:.2f} questions/s{gain}, "
                      f"decode {r['decode_ms_per_step']:.2f} ms/step ({r['x_floor']:.2f}x the floor "
                      f"{r['floor_ms']:.2f}; {r['floor_held_ms']:.2f} without padding), prefill "
                      f"{r['prefill_s_per_question'] * 1e3:.1f} ms/question"
                      + (f", peak {r['peak_gb']:.1f} GB" if r["peak_gb"] else ""), flush=True)
    res["agreement"] = agreement(model, s, decoder, bdec, sizes[-1] if s.tiny else 8)
    # the compiled step at B = 8 (eval's default on CUDA compiles the single-question step; here the batch's)
    if not compiled:
        common.skip("the compiled batch step", "give --batch-compiled (its autotuned compile takes minutes)")
    elif common.cuda(s):
        B = 8
        try:
            cdec = batch.BatchDecoder(model, compile=True)
            t = time.perf_counter()
            r = batch_run(model, s, BATCH_SETTINGS["a0.1 M10"], B, max(s.new_tokens), decoder, cdec, rate, reps)
            r["with_compile_s"] = time.perf_counter() - t
            res[f"a0.1 M10 compiled | B {B} | {max(s.new_tokens)}"] = r
            print(f"batch compiled step, a0.1 M10, B {B}: {r['decode_ms_per_step']:.2f} ms/step "
                  f"({r['x_floor']:.2f}x the floor), {r['questions_per_s']:.2f} questions/s", flush=True)
            del cdec
        except Exception as e:
            res["compiled error"] = repr(e)[:300]
            print(f"batch compiled step failed: {e!r}"[:300], flush=True)
        bdec.graphs.clear()
        torch.cuda.empty_cache()
    else:
        common.skip("the compiled batch step", "it compiles only on CUDA here")
    del model, decoder, bdec
    if common.cuda(s):
        torch.cuda.empty_cache()
    hf_batch(s, {"unpruned": s.rows, "a0.1 M10 rows": kept["a0.1 M10"]}, sizes, budget_s, res)
    if common.cuda(s):
        torch.cuda.empty_cache()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for floors.json (required unless --compare)")
    p.add_argument("--parts", default="", help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    p.add_argument("--variants", default="", help=f"comma-separated, of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--reps", type=int, default=None, help="prefill repeats per setting, the median kept (default 7; "
                   "3 with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a tiny config, on the CPU when there is no GPU: a smoke test")
    p.add_argument("--batch-budget", type=float, default=90, help="seconds for transformers' batched generate in "
                   "the batch part (its compiles); the shapes not reached are printed as skipped")
    p.add_argument("--batch-compiled", action="store_true", help="the batch part also times BatchDecoder(compile="
                   "True) at B = 8 (a compile with autotuning: minutes)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                   help="print the timings two JSON files share, side by side (the old bench/fast_path.py's "
                        "fast_path.json against floors.json); runs nothing")
    args = p.parse_args(argv)
    if args.compare:
        return common.compare(*args.compare)
    if args.out is None:
        p.error("--out is required")
    chosen, variants = common.parts(args.parts, PARTS), common.parts(args.variants, tuple(VARIANTS))
    s = common.shape(args.tiny)
    args.reps = args.reps or (3 if args.tiny else 7)
    res = dict(common.machine(), script="floors", tiny=args.tiny, parts=chosen, variants=variants, prompt_rows=s.rows,
               reps=args.reps)

    def save():
        return common.write_json(args.out, "floors.json", res)

    t0 = time.perf_counter()
    if "check" in chosen:
        res["check_float32"] = check_float32(s)
        save()
    if "released" in chosen:
        res["released"] = released_table(s, args.reps)
        save()
    if "batch" in chosen:
        t = time.perf_counter()
        res["batch"] = batch_table(s, copy_rate(s), 2 if not args.tiny else 1, args.batch_budget, args.batch_compiled)
        res["batch"]["part_s"] = time.perf_counter() - t
        save()
    if {"decode", "prefill"} & set(chosen):
        res["copy_bytes_per_s"] = rate = copy_rate(s)
        print(f"device copy: {rate / 1e12:.2f} TB/s (bytes read + written)", flush=True)
        model = common.random_llm(s)
        embeds = common.random_embeds(s, s.rows)
        n = new_tokens(s)
        # the tokens every decoder is fed
        out = generate(model, embeds, n, video=s.video, method=LLM_VTP, decoder=decoder_for("eager", model))
        tokens = list(out.tokens)
        res["weight_bytes_per_step"] = weight_bytes(model)
        for v in VARIANTS:  # in this order: each changes the model further
            if v == "fused":
                fast.prepare(model, compile=False)
            elif v == "compiled":
                if not common.cuda(s):
                    common.skip("the compiled variant",
                                "eval compiles only on CUDA (torch.compile on a CPU takes minutes)")
                    continue
                fast.prepare(model, compile=True)
            if v not in variants:
                continue
            label = VARIANTS[v]
            if "prefill" in chosen:
                t = time.perf_counter()
                res[f"prefill {label}"] = prefill_table(model, s, embeds, label, args.reps)
                res[f"prefill {label}"]["table_s"] = time.perf_counter() - t
            if "decode" in chosen:
                res[f"decode {label}"] = decode_table(model, s, embeds, tokens, rate, label, DECODERS[v])
            save()
    if "attention" in chosen:
        res["attention"] = attention_part(args.tiny)
        save()
    if "gemm" in chosen:
        res["gemm"] = gemm_part(args.tiny)
    res["total_s"] = time.perf_counter() - t0
    path = save()
    summary(res)
    print(f"total {res['total_s']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
