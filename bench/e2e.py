"""Per question, as a user pays it, at PLLaVA-7B shape on one GPU: minivtp against transformers; then growth in frames.

    python -m bench.e2e --out OUT                         # everything, OUT/e2e.json (--parts splits it)
    python -m bench.e2e --out OUT --parts eager,graphs,answer,compiled,hf,hf-static    # per question only
    python -m bench.e2e --out OUT --parts growth          # 8 .. 128 frames only
    python -m bench.e2e --out OUT --tiny                  # the same code at a tiny shape, on the CPU, in seconds

A question is: 16 frames through CLIP ViT-L/336 (layer -2), the projector, PLLaVA's pooling to 16 x 12 x 12, the
prompt (35 rows before the video, 60 after: 2,399 rows), prefill, and a greedy answer of exactly 5 tokens (multiple
choice) or 72 (open-ended). Questions are asked one after another in one process, as an evaluation loop asks them;
the first of each setting is timed apart ("first": graph capture, compile, CUDA's lazy loading) and the median of
the next three is the per-question time.

Parts (--parts, in this order; the model changes from one to the next as eval and answer change it):
  eager      the readable path on the model as loaded (`--eager`: fast.EagerOnGPU on CUDA)
  graphs     q+k+v and gate+up fused (fast.prepare(compile=False)) and one fast.FastDecoder for the loop: CUDA
             graphs, nothing compiled (`eval --no-compile`; `answer --no-compile` runs the same kernels with exact
             sizes and no prefill graphs)
  answer     `python -m minivtp answer`'s decoder on the same model: FastDecoder(bucket=1, prefill_bucket=0,
             step="triton"): the prefill uncompiled, no graph of it; the decode step's element-wise work in three Triton
             kernels (fast.triton_step)
  growth     8, 16, 32, 64 and 128 frames of 144 rows (128: 18,527 rows), unpruned against LLM-VTP alpha 0.1
             M 10, on the graphs' path: LLM prefill, decode, peak memory, KV bytes, and pruning's end-to-end gain
             for 5 and 72 tokens (vision + prefill + decode steps)
  compiled   `python -m minivtp eval`'s default on CUDA: fast.prepare (blocks compiled) and
             FastDecoder(step="tuned") (the decode step through the autotuned block)
  hf         transformers: CLIPVisionModel + LlamaForCausalLM.generate on the same embeddings, its default cache
  hf-static  the same with cache_implementation="static" (which compiles the decode step)
  qwen2.5-vl (only when named) Qwen2.5-VL-7B's shape, random weights shared by both: minivtp's host
             (minivtp/hosts/qwen2_5_vl.py, eager: M-RoPE prompts decode without fast.py) unpruned and LLM-VTP
             (alpha 0.1 M 10) against transformers' Qwen2_5_VLForConditionalGeneration.generate, 32 frames at
             448 x 448 (16 groups of 256 tokens), per question; CUDA only (--tiny runs it on the CPU)
Settings: unpruned, LLM-VTP (alpha 0.1 M 10; alpha 0.2 M 5), FastV (alpha 0.1, K 10), Look-M (recent = important =
0.05), PruMerge+ (in the vision tower). Names and JSON keys are those bench/e2e.py has always printed, so runs of
earlier commits compare line by line: "SETTING[ eager| compiled] | TOKENS" -> first_s, median_s.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import common
from bench.common import LLM_VTP, QUESTION_SETTINGS, clock
from minivtp import fast
from minivtp.generate import generate
from minivtp.rivals import PruMergePlus

PARTS = ("eager", "graphs", "answer", "growth", "compiled", "hf", "hf-static")
NAMED_ONLY = ("qwen2.5-vl",)  # run when --parts names them, never by default
KINDS = {"eager": " eager", "graphs": "", "answer": " answer", "compiled": " compiled"}  # the old e2e.py's suffixes


def ask(model, s, pixels, ids, n_new, setting, decoder):
    """One question through minivtp: (seconds, Generation)."""
    method, merged = QUESTION_SETTINGS[setting]
    t0 = clock(s.device)
    with torch.no_grad():
        embeds, video, _ = PruMergePlus().prompt(model, ids, pixels) if merged else model.prompt(ids, pixels)
        out = generate(model.llm, embeds, n_new, video=None if method is None else video, method=method,
                       decoder=decoder)
    t1 = clock(s.device)
    if out.tokens.numel() != n_new:
        raise RuntimeError(f"{setting}: {out.tokens.numel()} tokens, not {n_new}")
    return t1 - t0, out


def loop(fn, n: int = 4):
    """(first call's seconds, median of the next n-1)."""
    times = [fn() for _ in range(n)]
    return times[0], statistics.median(times[1:])


def questions(model, s, pixels, ids, kind, settings, res, reps):
    """Every setting at 5 and 72 tokens through one decoder for the loop, as eval keeps one."""
    t = time.perf_counter()
    if kind == "eager":
        decoder = fast.EagerOnGPU(model.llm) if common.cuda(s) else None
    elif kind == "graphs":
        fast.prepare(model.llm, compile=False)  # what answer and eval --no-compile do on CUDA
        decoder = fast.FastDecoder(model.llm)
    elif kind == "answer":  # as answer makes it (fast.decoder_for)
        fast.prepare(model.llm, compile=False)
        decoder = fast.FastDecoder(model.llm, bucket=1, prefill_bucket=0, step="triton" if common.cuda(s) else "plain")
    else:
        fast.prepare(model.llm, compile=True)
        decoder = fast.FastDecoder(model.llm, step="tuned")
    for n_new in s.new_tokens:
        for setting in settings:
            first, median = loop(lambda: ask(model, s, pixels, ids, n_new, setting, decoder)[0], reps)
            _, out = ask(model, s, pixels, ids, n_new, setting, decoder)
            res[f"{setting}{KINDS[kind]} | {n_new}"] = dict(first_s=first, median_s=median,
                                                            cache_rows=out.cache_lens[-1], prompt_rows=out.prompt_len)
            extra = f" ({time.perf_counter() - t:.0f} s since the compile began)" if kind != "graphs" else ""
            print(f"minivtp {setting:18s} {kind:8s} {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s{extra}",
                  flush=True)


@torch.no_grad()
def growth(model, s, reps: int = 3):
    """The LLM alone on random embeddings of T x Nv video rows (the graphs' path: fused products, a FastDecoder per
    setting), plus the vision tower's time for T frames. Unpruned against LLM-VTP alpha 0.1 M 10."""
    rows, n_new = [], max(s.new_tokens)
    t_cfg = s.text
    for T in s.growth:
        N = s.prefix + T * s.nv + s.question
        if N + n_new > t_cfg.max_seq_len:
            common.skip(f"growth at {T} frames",
                        f"{N} + {n_new} rows exceed the config's {t_cfg.max_seq_len} positions")
            continue
        embeds = common.random_embeds(s, N)
        video = common.VideoSpan(s.prefix, T, s.nv)
        pixels = common.random_pixels(s, frames=T)
        for _ in range(2):  # the second is timed
            t0 = clock(s.device)
            model.vision(pixels.to(s.dtype), -2)
            vision_s = clock(s.device) - t0
        for name, method in (("unpruned", None), ("llm-vtp a0.1 M10", LLM_VTP)):
            decoder = fast.FastDecoder(model.llm)
            runs = []
            for _ in range(reps):
                if common.cuda(s):
                    torch.cuda.reset_peak_memory_stats()
                out = generate(model.llm, embeds, n_new, video=None if method is None else video, method=method,
                               decoder=decoder)
                peak = torch.cuda.max_memory_allocated() if common.cuda(s) else 0
                runs.append((out.prefill_s, out.decode_s / (n_new - 1), peak))
            prefill_s = statistics.median(r[0] for r in runs[1:])
            step_s = statistics.median(r[1] for r in runs[1:])
            kv = sum(out.cache_lens) * 2 * t_cfg.n_kv_heads * t_cfg.head_dim * embeds.element_size()  # K and V
            row = dict(frames=T, prompt_rows=N, setting=name, vision_ms=vision_s * 1e3, prefill_ms=prefill_s * 1e3,
                       decode_ms_per_token=step_s * 1e3, peak_gb=max(r[2] for r in runs) / 1e9, kv_gb=kv / 1e9,
                       cache_rows=out.cache_lens[-1])
            for k in s.new_tokens:
                row[f"total_ms_{k}"] = (vision_s + prefill_s + step_s * (k - 1)) * 1e3
            row["total_ms"] = row[f"total_ms_{n_new}"]  # the old key: 72 tokens
            rows.append(row)
            print(f"growth {T:3d} frames ({N} rows) {name:16s}: prefill {row['prefill_ms']:.1f} ms, decode "
                  f"{row['decode_ms_per_token']:.2f} ms/token, peak {row['peak_gb']:.1f} GB, KV {row['kv_gb']:.2f} GB, "
                  + ", ".join(f"{k} tokens {row[f'total_ms_{k}']:.0f} ms" for k in s.new_tokens), flush=True)
            del decoder
        del embeds
        if common.cuda(s):
            torch.cuda.empty_cache()
    return rows


def transformers_part(model, s, pixels, ids, chosen, res, reps, out_json):
    """transformers' pipeline on the same kind of embeddings, weights made by common.randomize."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        common.skip("transformers", "it is not installed (pip install transformers)")
        return
    projector_src = model.projector
    clip, llm, projector = common.hf_models(*common.config_dicts(s), s.device, s.dtype, init=False)
    for m in (clip, llm):
        common.randomize(m)
    with torch.no_grad():  # the same projector weights as minivtp's
        projector[0].weight.copy_(projector_src.linear_1.weight)
        projector[0].bias.copy_(projector_src.linear_1.bias)
        projector[2].weight.copy_(projector_src.linear_2.weight)
        projector[2].bias.copy_(projector_src.linear_2.bias)
    kinds = [k for k in ("hf", "hf-static") if k in chosen]
    if "hf-static" in kinds and not common.cuda(s):
        common.skip("hf-static", "transformers' static cache compiles its decode step: minutes on a CPU")
        kinds.remove("hf-static")
    for kind in kinds:
        gen = dict(cache_implementation="static") if kind == "hf-static" else {}
        name = "static" if kind == "hf-static" else "default"
        for n_new in s.new_tokens:

            def one():
                t0 = clock(s.device)
                common.hf_answer(clip, projector, llm, pixels, ids, n_new, s.pooling, s.image_token, **gen)
                return clock(s.device) - t0

            try:
                first, median = loop(one, reps)
            except Exception as e:  # a compile that fails on this machine is a result too
                res[f"{name} | {n_new}"] = dict(error=repr(e)[:300])
                print(f"transformers {name} failed: {e!r}"[:300], flush=True)
                continue
            res[f"{name} | {n_new}"] = dict(first_s=first, median_s=median)
            print(f"transformers {name:7s} {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s", flush=True)
            out_json()


def summary(res):
    """The per-question table (medians, ms), then LLM-VTP a0.1 M10 against transformers as ratios of this run."""
    mv, hf, tokens = res.get("minivtp", {}), res.get("transformers", {}), res["new_tokens"]

    def ms(d, key):
        v = d.get(key, {}).get("median_s")
        return "" if v is None else f"{v * 1e3:.0f}"

    print("\n| setting | tokens | eager ms | graphs, fused ms | answer (Triton step) ms | eval default (compiled) "
          "ms | first, eval s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for n_new in tokens:
        for setting in QUESTION_SETTINGS:
            first = mv.get(f"{setting} compiled | {n_new}", {}).get("first_s")
            print(f"| {setting} | {n_new} | {ms(mv, f'{setting} eager | {n_new}')} | "
                  f"{ms(mv, f'{setting} | {n_new}')} | {ms(mv, f'{setting} answer | {n_new}')} | "
                  f"{ms(mv, f'{setting} compiled | {n_new}')} | {'' if first is None else f'{first:.2f}'} |")
        for kind in ("default", "static"):
            print(f"| transformers {kind} | {n_new} | | {ms(hf, f'{kind} | {n_new}')} | | | |")
    for n_new in tokens:
        for kind, label in (("", "graphs"), (" answer", "answer"), (" compiled", "eval default")):
            ours = mv.get(f"llm-vtp a0.1 M10{kind} | {n_new}", {}).get("median_s")
            for peer in ("default", "static"):
                theirs = hf.get(f"{peer} | {n_new}", {}).get("median_s")
                if ours and theirs:
                    print(f"{n_new:2d} tokens: LLM-VTP a0.1 M10 {label} vs transformers {peer}: {theirs / ours:.2f}x")
    lo, hi = min(tokens), max(tokens)
    for kind, label in ((" eager", "eager"), ("", "graphs"), (" answer", "answer"), (" compiled", "eval default")):
        a, b = (mv.get(f"llm-vtp a0.1 M10{kind} | {n}", {}).get("median_s") for n in (lo, hi))
        if a and b:  # what the longer answer's extra tokens cost each: the decode step inside the loop
            print(f"LLM-VTP a0.1 M10 {label}: ({hi}-token - {lo}-token answer) / {hi - lo} = "
                  f"{(b - a) / (hi - lo) * 1e3:.2f} ms per decoded token")
    rows = res.get("growth", [])
    if rows:
        print("\n| frames | prompt rows | prefill ms | decode ms/token | peak GB | KV GB | "
              + " | ".join(f"{k} tokens ms (gain)" for k in tokens) + " |\n" + "| --- " * (6 + len(tokens)) + "|")
        by = {(r["frames"], r["setting"]): r for r in rows}
        for T in sorted({r["frames"] for r in rows}):
            a, b = by.get((T, "unpruned")), by.get((T, "llm-vtp a0.1 M10"))
            if not (a and b):
                continue
            cells = [f"{a[k]:.{p}f} / {b[k]:.{p}f}" for k, p in (("prefill_ms", 1), ("decode_ms_per_token", 2),
                                                                   ("peak_gb", 1), ("kv_gb", 2))]
            gains = [f"{a[f'total_ms_{k}']:.0f} / {b[f'total_ms_{k}']:.0f} "
                     f"({a[f'total_ms_{k}'] / b[f'total_ms_{k}']:.2f}x)" for k in tokens]
            print(f"| {T} | {a['prompt_rows']} | " + " | ".join(cells + gains) + " |")
        for k in tokens:
            past = [T for T in sorted({r["frames"] for r in rows})
                    if (T, "unpruned") in by and (T, "llm-vtp a0.1 M10") in by
                    and by[T, "unpruned"][f"total_ms_{k}"] / by[T, "llm-vtp a0.1 M10"][f"total_ms_{k}"] >= 2]
            print(f"{k} tokens: pruning's end-to-end gain passes 2x " + (f"from {past[0]} frames" if past else
                                                                          "at none of these lengths"))


QWEN = {  # Qwen/Qwen2.5-VL-7B-Instruct's config.json, and a tiny twin (frames, side in pixels)
    "7b": dict(text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
               frames=32, side=448, layer=10),
    "tiny": dict(text=dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                           rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3])),
                 vision=dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                             window_size=56, fullatt_block_indexes=[1, 3]),
                 frames=4, side=112, layer=2),
}


def qwen_part(tiny: bool, reps: int) -> dict:
    """minivtp's Qwen2.5-VL host against transformers' pipeline, per question (pixels in, answer out), same weights."""
    import transformers
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig
    from minivtp.generate import Method
    from minivtp.hosts.qwen2_5_vl import Qwen25VL, transformers_to_ours
    q = QWEN["tiny" if tiny else "7b"]
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" and not tiny else torch.float32
    V = q["text"]["vocab_size"]
    ids_of = dict(vision_start_token_id=V - 4, vision_end_token_id=V - 3, video_token_id=V - 2, image_token_id=V - 1)
    cfg = Qwen2_5_VLConfig(text_config=q["text"], vision_config=q["vision"], **ids_of)
    torch.manual_seed(0)
    with torch.device(dev):
        hf = transformers.Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    with torch.device("meta"):
        ours = Qwen25VL.from_hf(cfg.to_dict())
    ours.load_state_dict({transformers_to_ours(k): v for k, v in hf.state_dict().items()}, assign=True)  # shared
    ours.eval()
    ours.min_pixels = ours.max_pixels = q["side"] ** 2  # the frames as they are
    ours.text_after = "grid"  # transformers 5.x's positions after the video, so the answers can be compared
    frames = torch.randint(0, 256, (q["frames"], q["side"], q["side"], 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.randint(0, V - 8, (14,), generator=g), torch.tensor([V - 4, V - 2, V - 3]),
                     torch.randint(0, V - 8, (57,), generator=g)]).to(dev)
    res = dict(device=dev, dtype=str(dtype), frames=q["frames"], side=q["side"], minivtp={}, transformers={})

    def ours_answer(n, method):
        pixels = ours.preprocess(frames).to(dev, dtype)
        embeds, video, positions = ours.prompt(ids, pixels)
        out = generate(ours.llm, embeds, n, video=video if method else None, method=method, positions=positions)
        res["video_tokens"], res["prompt_rows"] = video.frames * video.tokens_per_frame, embeds.shape[1]
        return out.tokens.tolist()

    def hf_answer(n):
        pixels = ours.preprocess(frames).to(dev, dtype)  # the processor's pixels are the host's (tests/test_qwen2_5_vl)
        patches = rearrange_patches(ours, pixels)
        grid = patches[1]
        i = (ids == V - 2).nonzero().item()
        full = torch.cat([ids[:i], ids[i:i + 1].repeat(grid[0] * grid[1] * grid[2] // 4), ids[i + 1:]])[None]
        out = hf.generate(input_ids=full, pixel_values_videos=patches[0],
                          video_grid_thw=torch.tensor([grid], device=dev),
                          second_per_grid_ts=torch.tensor([1.0], device=dev),
                          mm_token_type_ids=(full == V - 2).int() * 2,
                          max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, full.shape[1]:].tolist()

    settings = {"unpruned": None, "llm-vtp a0.1 M10": Method(alpha=0.1, layer=q["layer"])}
    with torch.no_grad():
        for n in (5, 72) if not tiny else (2, 4):
            for name, method in settings.items():
                res["minivtp"][f"{name} | {n}"] = timed(lambda: ours_answer(n, method), reps, dev)
            res["transformers"][f"unpruned | {n}"] = timed(lambda: hf_answer(n), reps, dev)
            same = ours_answer(n, None) == hf_answer(n)
            res[f"same_answer | {n}"] = same
            print(f"qwen2.5-vl {n} tokens: " + ", ".join(f"{k.split(' |')[0]} {v['median_s']:.3f} s" for k, v in
                                                     res["minivtp"].items() if k.endswith(f"| {n}")) +
                  f"; transformers {res['transformers'][f'unpruned | {n}']['median_s']:.3f} s; same answer: {same}",
                  flush=True)
    return res


def rearrange_patches(host, pixels):
    from minivtp.hosts.qwen_vit import patchify
    return patchify(pixels, host.vision.cfg)


def timed(fn, reps: int, dev) -> dict:
    """The first call apart, then the median of the rest, in seconds (the GPU synchronised around each)."""
    times = []
    for _ in range(max(2, reps)):
        t = clock(dev)
        fn()
        times.append(clock(dev) - t)
    return dict(first_s=times[0], median_s=statistics.median(times[1:]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for e2e.json (required unless --compare)")
    p.add_argument("--parts", default="", help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    p.add_argument("--tiny", action="store_true", help="a tiny config, on the CPU when there is no GPU: a smoke test")
    p.add_argument("--reps", type=int, default=None, help="questions per setting: the first, then the median of the "
                   "rest (default 4; 2 with --tiny)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"),
                   help="print the timings two JSON files share, side by side (an earlier commit's e2e.json "
                        "against this one's); runs nothing")
    args = p.parse_args(argv)
    if args.compare:
        return common.compare(*args.compare)
    if args.out is None:
        p.error("--out is required")
    chosen = common.parts(args.parts, PARTS + NAMED_ONLY) if args.parts else list(PARTS)
    if "qwen2.5-vl" in chosen and not args.tiny and not torch.cuda.is_available():
        print("error: --parts qwen2.5-vl runs Qwen2.5-VL-7B's shape on CUDA (about 17 GB in bf16) and this machine "
              "has no GPU; --tiny runs it at a tiny shape on the CPU", file=sys.stderr)
        return 2
    s = common.shape(args.tiny)
    reps = args.reps or (2 if args.tiny else 4)
    res = dict(common.machine(), script="e2e", tiny=args.tiny, parts=chosen, prompt_rows=s.rows,
               new_tokens=list(s.new_tokens), minivtp={}, transformers={}, growth=[])

    def save():
        return common.write_json(args.out, "e2e.json", res)

    if "qwen2.5-vl" in chosen:
        res["qwen2.5-vl"] = qwen_part(args.tiny, reps)
        save()
        if set(chosen) <= set(NAMED_ONLY):
            print("wrote", save())
            return 0
    torch.manual_seed(0)
    model = common.random_video_llm(s)
    pixels, ids = common.random_pixels(s), common.prompt_ids(s)
    for kind in ("eager", "graphs", "answer", "growth", "compiled"):
        if kind not in chosen:
            continue
        if kind == "growth":
            fast.prepare(model.llm, compile=False)  # the graphs' path, whether or not that part ran
            res["growth"] = growth(model, s, reps=max(2, reps - 1))
        elif kind == "compiled" and not common.cuda(s):
            common.skip("compiled", "eval compiles only on CUDA (torch.compile on a CPU takes minutes)")
        else:
            settings = ("unpruned", "llm-vtp a0.1 M10") if kind == "eager" else QUESTION_SETTINGS
            questions(model, s, pixels, ids, kind, settings, res["minivtp"], reps)
        save()
    if {"hf", "hf-static"} & set(chosen):
        model.llm = None  # room for transformers' copy
        if common.cuda(s):
            torch.cuda.empty_cache()
        transformers_part(model, s, pixels, ids, chosen, res["transformers"], reps, save)
    path = save()
    summary(res)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
