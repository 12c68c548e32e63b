"""Per-question wall time as a user sees it, at PLLaVA-7B shape on one GPU, minivtp against transformers.

    python bench/e2e.py --out OUT            # one run, about 6 minutes on an H100; OUT/e2e.json

A question is: 16 frames through CLIP ViT-L/336 (layer -2), the projector, PLLaVA's pooling to 16 x 12 x 12, the
prompt (35 rows before the video, 60 after), prefill, and a greedy answer of 5 tokens (multiple choice) or 72
(open-ended). Random bf16 weights: speed does not depend on their values. Questions are asked one after another in
one process, as an evaluation loop does; the first of each setting is a warm-up (graph capture, compile), timed
and reported apart; the median of the next ones is the per-question time.

minivtp: `VideoLLM.prompt` + `generate` with one `FastDecoder` for the whole loop: the eager path (`--eager`, the
model as loaded), then CUDA graphs with q+k+v fused (what `answer` runs on CUDA, and `eval --no-compile`), then as
`python -m minivtp eval` runs on CUDA by default (the decoder blocks compiled, once for the loop, and the decode
step through the autotuned block of FastDecoder(compile=True)). Settings:
unpruned, LLM-VTP (alpha 0.1 M 10; alpha 0.2 M 5), FastV (alpha 0.1, K 10), Look-M (recent = important = 0.05),
PruMerge+ (in the vision tower).
transformers: CLIPVisionModel + LlamaForCausalLM.generate on the same kind of embeddings, its default dynamic
cache, and its static cache (`cache_implementation="static"`, which compiles the decode step).
Then growth: 8, 16, 32, 64 frames of 144 tokens, unpruned against LLM-VTP alpha 0.1 M 10: prefill and decode time,
peak memory, KV bytes, and the end-to-end speed-up of pruning for a 72-token answer.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minivtp.generate import FastDecoder, Method, generate, prepare_fast  # noqa: E402
from minivtp.model import Config  # noqa: E402
from minivtp.vision import VideoLLM, VisionConfig, pllava_pool  # noqa: E402

PREFIX, NQ, IMAGE = 35, 60, 32000
VICUNA = dict(vocab_size=32064, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008)
VISION = VisionConfig()  # CLIP ViT-L/14 at 336 px
SETTINGS = {  # name -> (Method or None, PruMerge+)
    "unpruned": (None, False),
    "llm-vtp a0.1 M10": (Method(alpha=0.1, layer=10), False),
    "llm-vtp a0.2 M5": (Method(alpha=0.2, layer=5), False),
    "fastv a0.1 K10": (Method("fastv", alpha=0.1, layer=10), False),
    "look-m 0.05+0.05": (Method("look-m", recent=0.05, important=0.05), False),
    "prumerge+": (None, True),
}


DEV = "cuda"


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


@torch.no_grad()
def random_(module):
    """Random weights in place, std 0.02 (norms at 1): the values do not change the speed."""
    for name, p in module.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0, 0.02)
    return module


def minivtp_model(max_seq_len, vision=None):
    with torch.device("meta"):
        m = VideoLLM(Config(**VICUNA, max_seq_len=max_seq_len), vision or VisionConfig(), arrangement="pllava",
                     pooling_shape=(16, 12, 12), image_token=IMAGE, frames=16)
    m = m.to_empty(device=DEV).to(torch.bfloat16)
    random_(m)
    m.llm.output.weight = m.llm.output.weight  # untied, as Vicuna
    return m.eval()


def ids_for(n_frames=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 32000, (PREFIX + 1 + NQ,), generator=g)
    ids[PREFIX] = IMAGE
    return ids.to(DEV)


def ask_minivtp(model, pixels, ids, n_new, setting, decoder):
    method, merged = SETTINGS[setting]
    t0 = sync()
    with torch.no_grad():
        embeds, video = model.prompt(ids, pixels, prumerge=merged)
        out = generate(model.llm, embeds, n_new, video=None if method is None else video, method=method,
                       fast_decode=decoder if decoder is not None else False)
    t1 = sync()
    assert out.tokens.numel() == n_new
    return t1 - t0, out


def time_loop(fn, n=4):
    """(first call's seconds, median of the next n-1)."""
    times = [fn() for _ in range(n)]
    return times[0], statistics.median(times[1:])


def hf_models():
    import transformers
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
                hidden_size=VISION.dim, intermediate_size=VISION.hidden_dim, num_hidden_layers=VISION.n_layers,
                num_attention_heads=VISION.n_heads, image_size=VISION.image_size, patch_size=VISION.patch_size)).eval()
            llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
                vocab_size=VICUNA["vocab_size"], hidden_size=VICUNA["dim"], intermediate_size=VICUNA["hidden_dim"],
                num_hidden_layers=VICUNA["n_layers"], num_attention_heads=VICUNA["n_heads"],
                num_key_value_heads=VICUNA["n_kv_heads"], max_position_embeddings=4096)).eval()
    finally:
        torch.set_default_dtype(torch.float32)
    return random_(clip), random_(llm)


@torch.no_grad()
def ask_hf(clip, llm, projector, pixels, ids, n_new, **gen):
    t0 = sync()
    h = clip(pixels.to(torch.bfloat16), output_hidden_states=True).hidden_states[-2][:, 1:]  # (16, 576, 1024)
    video = pllava_pool(projector(h), VISION.grid, (16, 12, 12))
    e = llm.get_input_embeddings()
    embeds = torch.cat([e(ids[:PREFIX]), video.to(torch.bfloat16), e(ids[PREFIX + 1:])])[None]
    out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], device=DEV,
                       dtype=torch.long), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       pad_token_id=0, **gen)
    t1 = sync()
    assert out.shape[1] == n_new, out.shape
    return t1 - t0


@torch.no_grad()
def growth(model, frames_list=(8, 16, 32, 64), n_new=72):
    """LLM alone on random embeddings of T x 144 video rows, plus the vision tower's time for T frames."""
    rows = []
    for T in frames_list:
        N = PREFIX + T * 144 + NQ
        embeds = torch.randn(1, N, VICUNA["dim"], device=DEV, dtype=torch.bfloat16) * 0.02
        from minivtp.vtp import VideoSpan
        video = VideoSpan(PREFIX, T, 144)
        pixels = torch.randn(T, 3, VISION.image_size, VISION.image_size, device=DEV)
        for _ in range(2):
            t0 = sync()
            model.vision(pixels.to(torch.bfloat16), -2)
            vision_s = sync() - t0
        for name, method in (("unpruned", None), ("llm-vtp a0.1 M10", Method(alpha=0.1, layer=10))):
            decoder = FastDecoder(model.llm)
            res = []
            for _ in range(3):
                if DEV == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                out = generate(model.llm, embeds, n_new, video=None if method is None else video, method=method,
                               fast_decode=decoder)
                peak = torch.cuda.max_memory_allocated() if DEV == "cuda" else 0
                res.append((out.prefill_s, out.decode_s / (n_new - 1), peak))
            prefill_s = statistics.median(r[0] for r in res[1:])
            decode_s = statistics.median(r[1] for r in res[1:])
            kv = sum(out.cache_lens) * 2 * VICUNA["dim"] * 2  # K and V, bf16, rows in every layer
            rows.append(dict(frames=T, prompt_rows=N, setting=name, vision_ms=vision_s * 1e3,
                             prefill_ms=prefill_s * 1e3, decode_ms_per_token=decode_s * 1e3,
                             peak_gb=res[-1][2] / 1e9, kv_gb=kv / 1e9,
                             total_ms=(vision_s + prefill_s + decode_s * (n_new - 1)) * 1e3))
            print(rows[-1], flush=True)
        del embeds
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-hf-static", action="store_true")
    p.add_argument("--tiny", action="store_true", help="small shapes on the CPU: a smoke test of this script")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled loop (eval's default on CUDA)")
    p.add_argument("--skip-hf", action="store_true", help="time minivtp only")
    p.add_argument("--skip-growth", action="store_true")
    args = p.parse_args()
    global DEV, VISION
    if args.tiny:
        DEV = "cpu"
        VICUNA.update(dim=64, n_layers=12, n_heads=4, n_kv_heads=4, hidden_dim=128)
        VISION = VisionConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, image_size=28, patch_size=14)
    args.out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else "cpu", torch=torch.__version__)
    model = minivtp_model(max_seq_len=16384, vision=VISION)
    pixels = torch.randn(16, 3, VISION.image_size, VISION.image_size, device=DEV)
    ids = ids_for()
    res["minivtp"] = {}
    for n_new in (5, 72):  # --eager: the readable path on the model as loaded
        for setting in ("unpruned", "llm-vtp a0.1 M10"):
            first, median = time_loop(lambda: ask_minivtp(model, pixels, ids, n_new, setting, None)[0], n=3)
            res["minivtp"][f"{setting} eager | {n_new}"] = dict(first_s=first, median_s=median)
            print(f"minivtp {setting:18s} eager {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s", flush=True)
    prepare_fast(model.llm, compile=False)  # what answer does on CUDA (and eval --no-compile)
    for n_new in (5, 72):
        decoder = FastDecoder(model.llm)
        for setting in SETTINGS:
            first, median = time_loop(lambda: ask_minivtp(model, pixels, ids, n_new, setting, decoder)[0])
            _, out = ask_minivtp(model, pixels, ids, n_new, setting, decoder)
            res["minivtp"][f"{setting} | {n_new}"] = dict(first_s=first, median_s=median, cache_rows=out.cache_lens[-1],
                                                          prompt_rows=out.prompt_len)
            print(f"minivtp {setting:18s} {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s", flush=True)
    res["growth"] = [] if args.skip_growth else growth(model)
    if not args.no_compile:  # what `python -m minivtp eval` does on CUDA: compile once, then the whole loop
        t = sync()
        prepare_fast(model.llm, compile=True)
        decoder = FastDecoder(model.llm, compile=True)  # the decode step through tuned_block, as eval's
        for n_new in (5, 72):
            for setting in SETTINGS:
                first, median = time_loop(lambda: ask_minivtp(model, pixels, ids, n_new, setting, decoder)[0])
                res["minivtp"][f"{setting} compiled | {n_new}"] = dict(first_s=first, median_s=median)
                print(f"minivtp {setting:18s} compiled {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s "
                      f"({sync() - t:.0f} s since the compile began)", flush=True)
    (args.out / "e2e.json").write_text(json.dumps(res, indent=1))
    if args.skip_hf:
        summary(res)
        return
    projector = model.projector
    model.llm = None
    torch.cuda.empty_cache()
    clip, llm = hf_models()
    res["transformers"] = {}
    for n_new in (5, 72):
        first, median = time_loop(lambda: ask_hf(clip, llm, projector, pixels, ids, n_new))
        res["transformers"][f"default | {n_new}"] = dict(first_s=first, median_s=median)
        print(f"transformers default {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s", flush=True)
        (args.out / "e2e.json").write_text(json.dumps(res, indent=1))
    if not args.skip_hf_static:
        for n_new in (5, 72):
            try:
                first, median = time_loop(lambda: ask_hf(clip, llm, projector, pixels, ids, n_new,
                                                         cache_implementation="static"))
            except Exception as e:  # a compile that fails on this machine is a result too
                res["transformers"][f"static | {n_new}"] = dict(error=repr(e)[:300])
                print(f"transformers static failed: {e!r}"[:300], flush=True)
                continue
            res["transformers"][f"static | {n_new}"] = dict(first_s=first, median_s=median)
            print(f"transformers static {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s", flush=True)
            (args.out / "e2e.json").write_text(json.dumps(res, indent=1))
    (args.out / "e2e.json").write_text(json.dumps(res, indent=1))
    summary(res)
    print("wrote", args.out / "e2e.json")


def summary(res):
    """Per question, seconds; then LLM-VTP a0.1 M10 against transformers' pipelines, as ratios of this run."""
    mv, hf = res["minivtp"], res.get("transformers", {})
    kinds = ("", " compiled", " eager")
    print("\n| setting | tokens | graphs, fused q+k+v s | eval default (+ compile_blocks) s | eager s |\n"
          "| --- | --- | --- | --- | --- |")
    for n_new in (5, 72):
        for setting in SETTINGS:
            cells = [mv.get(f"{setting}{kind} | {n_new}", {}).get("median_s") for kind in kinds]
            print(f"| {setting} | {n_new} | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells) + " |")
        for kind in ("default", "static"):
            t = hf.get(f"{kind} | {n_new}", {}).get("median_s")
            print(f"| transformers {kind} | {n_new} | {'' if t is None else f'{t:.3f}'} | | |")
    for n_new in (5, 72):
        for kind in kinds[:2]:
            ours = mv.get(f"llm-vtp a0.1 M10{kind} | {n_new}", {}).get("median_s")
            for peer in ("default", "static"):
                theirs = hf.get(f"{peer} | {n_new}", {}).get("median_s")
                if ours and theirs:
                    print(f"{n_new:2d} tokens: LLM-VTP a0.1 M10{kind or ' graphs'} vs transformers {peer}: "
                          f"{theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
