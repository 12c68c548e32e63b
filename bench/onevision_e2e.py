"""Per-question wall time at LLaVA-OneVision-7B shape on one GPU: minivtp's host (minivtp/hosts/llava_onevision.py)
against transformers' own LlavaOnevisionForConditionalGeneration, both holding the same random weights.

    python -m bench.onevision_e2e --out OUT            # on a GPU, bf16; OUT/onevision_e2e.json and a table
    python -m bench.onevision_e2e --tiny --out OUT     # tiny shapes on the CPU, float32: proves the script works

A question: 32 frames at 384 px through SigLIP so400m (26 blocks), the projector, bilinear pooling of 27 x 27 to
14 x 14 and the newline row (6273 video rows), the qwen_1_5 prompt (14 rows before the video, 60 after), prefill
and a greedy answer of 5 tokens (multiple choice) or 72 (open-ended), on Qwen2-7B. Random weights: speed does not
depend on their values. transformers gets input_ids with one video token per feature row and pixel_values_videos,
as its processor gives them, and generates with its default cache; minivtp gets one placeholder.

minivtp's settings: unpruned, LLM-VTP (alpha 0.1 M 10; alpha 0.2 M 5), FastV (alpha 0.1, K 10), Look-M
(recent = important = 0.05); each eager (the readable path) and, on CUDA, with the fast path as `answer` uses it
(q+k+v fused, CUDA graphs, one FastDecoder for the loop). The first question of each setting is timed apart
(warm-up, captures); the median of the others is the per-question time. The unpruned greedy tokens of both are
compared: same weights, same answer (in bf16 a near tie may flip a late token; the table says how many agree).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from minivtp import fast
from minivtp.generate import Method, generate
from minivtp.hosts.llava_onevision import LlavaOnevision, transformers_to_ours
from minivtp.hosts.siglip import SiglipConfig
from minivtp.hf_config import config_from_hf
from minivtp.rivals import FastV, LookM

PREFIX, NQ = 14, 60
SHAPES = {  # LLaVA-OneVision-7B (llava-hf config: Qwen2-7B, SigLIP so400m with 26 blocks), and a tiny twin
    "7b": dict(text=dict(vocab_size=152128, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
               vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16,
                           image_size=384, patch_size=14, vision_use_head=False), frames=32),
    "tiny": dict(text=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=12,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                             image_size=28, patch_size=7, vision_use_head=False), frames=4),
}
SETTINGS = {
    "unpruned": None,
    "llm-vtp a0.1 M10": Method(alpha=0.1, layer=10),
    "llm-vtp a0.2 M5": Method(alpha=0.2, layer=5),
    "fastv a0.1 K10": FastV(alpha=0.1, layer=10),
    "look-m 0.05+0.05": LookM(recent=0.05, important=0.05),
}


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def time_loop(fn, n):
    """(first call's seconds, median of the next n-1)."""
    times = [fn() for _ in range(n)]
    return times[0], statistics.median(times[1:])


@torch.no_grad()
def build(shape: dict, device, dtype, std: float):
    """transformers' model with random weights, and minivtp's host holding the very same tensors (no copy)."""
    import transformers
    video_id = shape["text"]["vocab_size"] - 1
    cfg = transformers.LlavaOnevisionConfig(
        text_config=transformers.Qwen2Config(**shape["text"]),
        vision_config=transformers.SiglipVisionConfig(**shape["vision"]), image_token_index=video_id - 1,
        video_token_index=video_id, vision_feature_layer=-1, vision_feature_select_strategy="full")
    torch.manual_seed(0)
    with torch.device(device):
        hf = transformers.LlavaOnevisionForConditionalGeneration(cfg).to(dtype).eval()
    for name, p in hf.named_parameters():  # random, norms near 1: the values do not change the speed
        p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else std * torch.randn_like(p))
    with torch.device("meta"):
        ours = LlavaOnevision(config_from_hf(dict(shape["text"], model_type="qwen2")),
                              SiglipConfig.from_hf(shape["vision"]), video_token=video_id, frames=shape["frames"])
    filled = set()
    for name, t in hf.state_dict().items():
        target = transformers_to_ours(name)
        if target:
            module, _, leaf = target.rpartition(".")
            setattr(ours.get_submodule(module), leaf, torch.nn.Parameter(t, requires_grad=False))
            filled.add(target)
    missing = [n for n, _ in ours.named_parameters() if n not in filled]
    assert not missing, f"not filled from transformers' model: {missing[:3]}"
    return hf, ours.eval(), video_id


def ids_for(vocab: int, video_id: int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab - 2, (PREFIX + 1 + NQ,), generator=g)
    ids[PREFIX] = video_id
    return ids.to(device)


@torch.no_grad()
def ask_minivtp(model, pixels, ids, n_new, method, decoder):
    t0 = sync(pixels.device)
    embeds, video, _ = model.prompt(ids, pixels)
    out = generate(model.llm, embeds, n_new, video=None if method is None else video, method=method,
                   decoder=decoder)
    t1 = sync(pixels.device)
    assert out.tokens.numel() == n_new
    return t1 - t0, out


@torch.no_grad()
def ask_hf(hf, pixels, ids, video_id, n_video, n_new):
    i = (ids == video_id).nonzero().item()
    full = torch.cat([ids[:i], torch.full((n_video,), video_id, device=ids.device), ids[i + 1 :]])[None]
    t0 = sync(pixels.device)
    out = hf.generate(input_ids=full, attention_mask=torch.ones_like(full), pixel_values_videos=pixels[None],
                      max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
    t1 = sync(pixels.device)
    new = out[0, full.shape[1]:]
    assert new.numel() == n_new, new.shape
    return t1 - t0, new


def run(tiny: bool, out_dir: Path, tokens=(5, 72), repeats: int = 3) -> dict:
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    shape = SHAPES["tiny" if tiny else "7b"]
    hf, model, video_id = build(shape, device, dtype, std=0.3 / shape["text"]["hidden_size"] ** 0.5 * 4 if tiny
                                else 0.02)
    S = shape["vision"]["image_size"]
    pixels = torch.randn(shape["frames"], 3, S, S, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    ids = ids_for(shape["text"]["vocab_size"], video_id, device)
    n_video = shape["frames"] * model.tokens_per_frame() + 1  # + the newline row
    res = dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
               shape="tiny" if tiny else "llava-onevision-7b", frames=shape["frames"],
               tokens_per_frame=model.tokens_per_frame(), prompt_rows=PREFIX + n_video + NQ, minivtp={},
               transformers={})
    out_dir.mkdir(parents=True, exist_ok=True)
    save = lambda: (out_dir / "onevision_e2e.json").write_text(json.dumps(res, indent=1))  # noqa: E731
    modes = ["eager"] + (["graphs"] if device == "cuda" else [])
    for mode in modes:
        decoder = fast.EagerOnGPU(model.llm) if device == "cuda" else None
        if mode == "graphs":  # what `answer` does on CUDA: q+k+v fused, CUDA graphs
            fast.fuse_qkv(model.llm)
        for n_new in tokens:
            if mode == "graphs":
                decoder = fast.FastDecoder(model.llm)
            for name, method in SETTINGS.items():
                first, median = time_loop(lambda: ask_minivtp(model, pixels, ids, n_new, method, decoder)[0], repeats)
                _, out = ask_minivtp(model, pixels, ids, n_new, method, decoder)
                res["minivtp"][f"{name} {mode} | {n_new}"] = dict(first_s=first, median_s=median,
                                                                  cache_rows=out.cache_lens[-1], tokens=out.tokens.tolist())
                print(f"minivtp {name:18s} {mode:6s} {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s",
                      flush=True)
                save()
    for n_new in tokens:
        first, median = time_loop(lambda: ask_hf(hf, pixels, ids, video_id, n_video, n_new)[0], repeats)
        _, new = ask_hf(hf, pixels, ids, video_id, n_video, n_new)
        ours = res["minivtp"][f"unpruned eager | {n_new}"]["tokens"]
        agree = next((i for i, (a, b) in enumerate(zip(ours, new.tolist())) if a != b), n_new)
        res["transformers"][f"default | {n_new}"] = dict(first_s=first, median_s=median, tokens=new.tolist(),
                                                         tokens_equal_to_minivtp_unpruned=agree)
        print(f"transformers default {n_new:2d} tokens: first {first:.3f} s, then {median:.3f} s; the first {agree} "
              f"tokens equal minivtp's unpruned answer", flush=True)
        save()
    summary(res, tokens, modes)
    return res


def summary(res, tokens, modes):
    """Per question, seconds; then each minivtp setting against transformers, as ratios of this run."""
    mv, hf = res["minivtp"], res["transformers"]
    print(f"\n{res['shape']} on {res['device']}: {res['frames']} frames x {res['tokens_per_frame']} tokens, "
          f"{res['prompt_rows']} prompt rows\n")
    print("| setting | tokens | " + " | ".join(f"minivtp {m} s | x transformers" for m in modes) + " |")
    print("| --- | --- | " + " | ".join("--- | ---" for _ in modes) + " |")
    for n_new in tokens:
        theirs = hf[f"default | {n_new}"]["median_s"]
        for name in SETTINGS:
            cells = []
            for m in modes:
                t = mv[f"{name} {m} | {n_new}"]["median_s"]
                cells += [f"{t:.3f}", f"{theirs / t:.2f}x"]
            print(f"| {name} | {n_new} | " + " | ".join(cells) + " |")
        print(f"| transformers default | {n_new} | {theirs:.3f} |" + " |" * (2 * len(modes) - 1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true", help="small shapes on the CPU: a smoke test of this script")
    p.add_argument("--tokens", default="5,72", help="answer lengths, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="questions per setting (the first is the warm-up)")
    args = p.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("error: the 7B shape needs a CUDA GPU (--tiny runs on the CPU)", file=sys.stderr)
        return 2
    if args.repeats < 2:
        print("error: --repeats must be >= 2 (the first question is the warm-up)", file=sys.stderr)
        return 2
    run(args.tiny, args.out, tuple(int(t) for t in args.tokens.split(",")), args.repeats)
    print("wrote", args.out / "onevision_e2e.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
