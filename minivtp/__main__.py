"""python -m minivtp answer: ask a video a question with a PLLaVA / Tarsier / LLaVA checkpoint, LLM-VTP on.
python -m minivtp eval: a multiple-choice benchmark in MVBench's format (minivtp/evaluate.py), or one of the paper's
benchmarks as downloaded (--benchmark, minivtp/benchmarks.py).
python -m minivtp generate: text from any LLaMA checkpoint with our decoder and tokenizer (no video).

    python -m minivtp answer --weights pllava-7b --video clip.mp4 --question "What is he doing?" \\
        --alpha 0.1 --layer 10 --device cuda --dtype bfloat16 --heatmap kept.png

    python -m minivtp generate --weights "$(python -m minivtp.smollm2)" --prompt "Why is the sky blue?" --chat

Prints the answer, the kept ratio and the prefill and decode times (--json: one JSON object). Any problem is one
line on stderr and exit code 2.
"""

import json
import sys
import time
from pathlib import Path

import torch

from minivtp.cli import (DTYPES, VARIANT_HELP, Parser, check_device, is_qformer_host, load_checkpoint, method_of,
                         qformer_inputs, zero_count_note)


def answer(args):
    from minivtp import png
    from minivtp.cli import encode_prompt
    from minivtp.generate import generate
    from minivtp.prompts import PLLAVA_TEMPLATES, build_prompt
    from minivtp.vision import read_frames

    if args.template and args.template not in PLLAVA_TEMPLATES:
        raise ValueError(f"--template {args.template!r} is not one of {', '.join(PLLAVA_TEMPLATES)}")
    merged, method = args.method == "prumerge+", method_of(args)  # PruMerge+ prunes in the vision tower
    model, tok, load_s = load_checkpoint(args)
    if args.template and model.arrangement in ("llava-onevision", "llava-video"):
        raise ValueError(f"--template is PLLaVA's; a {model.arrangement} checkpoint has its own prompt")
    frames, note = read_frames(args.video, model.frames, model.sample_indices)
    if note:
        print(f"note: {note}", file=sys.stderr)
    pixels = model.preprocess(frames).to(args.device)
    extra = {}
    if is_qformer_host(model):  # ST-LLM, InstructBLIP-Video: their own template, the question for the Q-Former too
        if args.heatmap:
            raise ValueError("--heatmap draws over a frame's patches; a Q-Former host's video tokens are queries, "
                             "which have no place in the frame")
        ids, extra = qformer_inputs(model, tok, args.question, args.device)
    else:
        text = build_prompt(model.arrangement, args.question, args.template, placeholder=model.placeholder)
        ids = torch.tensor(encode_prompt(tok, text, model), device=args.device)
    decoder = one_shot_decoder(model.llm, args)
    t = time.perf_counter()
    with torch.no_grad():
        embeds, video = model.prompt(ids, pixels, prumerge=merged, **extra)  # vision tower, projector, ..., splice
    if embeds.is_cuda:
        torch.cuda.synchronize()
    encode_s = time.perf_counter() - t
    n_max = model.llm.cfg.max_seq_len
    if embeds.shape[1] + args.max_new_tokens > n_max:
        raise ValueError(f"the prompt is {embeds.shape[1]} rows ({video.end - video.start} of them video) and "
                         f"--max-new-tokens {args.max_new_tokens} more would exceed the model's {n_max} positions")
    note = zero_count_note(method, video)
    if note:
        print(f"note: {note}", file=sys.stderr)
    out = generate(model.llm, embeds, args.max_new_tokens, video=video if method else None, method=method,
                   eos_id=tok.eos, decoder=decoder)
    n_video = video.unpruned_rows if merged else video.end - video.start
    kept = video.end - video.start if merged else int(out.kept.numel()) if method else n_video
    text = tok.decode([t for t in out.tokens.tolist() if t != tok.eos], skip_special=True)
    if getattr(model, "stop_text", None):  # ST-LLM, VideoChat2: the answer ends where the next "###" turn begins
        text = text.split(model.stop_text)[0]
    result = dict(answer=text.strip(),
                  method=args.method if method or merged else None, alpha=args.alpha,
                  layer=method.layer if method and method.name != "look-m" else None, video_tokens=n_video,
                  kept_video_tokens=kept, kept_ratio=kept / n_video, decode=decode_name(decoder, args), prompt_rows=out.prompt_len, cache_rows=out.cache_len, cache_rows_per_layer=out.cache_lens,
                  new_tokens=len(out.tokens), load_s=load_s, encode_s=encode_s, prefill_s=out.prefill_s,
                  decode_s=out.decode_s, decode_ms_per_token=1e3 * out.decode_s / max(1, len(out.tokens) - 1),
                  variant=method.variant if method else None)
    if note:
        result["note"] = note
    if args.heatmap:
        if method is None or args.method in ("look-m", "random"):
            raise ValueError("--heatmap draws the attention that chose the kept tokens: give --alpha below 1 with "
                             "--method llm-vtp, complement or fastv")
        png.write_png(args.heatmap, heatmap(frames, out.pruning.scores.float().cpu(), out.kept.cpu(), video, model))
        result["heatmap"] = str(args.heatmap)
    print(json.dumps(result) if args.json else report(result))
    return 0


def one_shot_decoder(llm, args):
    """answer's decoder: the static cache and CUDA graph wherever there is a GPU (or with --fast-decode), the
    readable path otherwise (None: generate's default; on a CPU there are no graphs to gain from).

    On CUDA the step's element-wise work runs in three Triton kernels (fast.triton_step): 4.4 ms a token instead
    of 6.4 at 7B on an H200, and nothing traced or compiled by torch, which would cost a one-shot process more
    than the whole answer (bench/RESULTS.md: the compiled step, warm from torch's on-disk cache, still added 11 s
    to a 14 s command). What a process pays once for the kernels (Triton finding them on disk, their first
    launches, measured as decode time beyond the steps) is about 0.5 s: a 72-token answer decodes about 0.4 s
    slower than with --no-compile (the graph of the plain step, no Triton); from some 250 tokens, or over a loop
    of questions, the kernels gain."""
    from minivtp import fast
    cuda = torch.device(args.device).type == "cuda"
    if args.eager or not (cuda or args.fast_decode):
        return fast.EagerOnGPU(llm) if args.eager and cuda else None
    triton = cuda and not args.no_compile
    if triton and not fast.triton_fits(llm):
        print(f"note: head_dim {llm.cfg.head_dim} is not a power of two, which the Triton step's RoPE kernel needs: "
              "decoding with the graph of the plain step (as --no-compile does)", file=sys.stderr)
        triton = False
    if cuda:
        fast.prepare(llm, compile=False)  # q+k+v and gate+up as one matmul each
    # one question: a graph for the decode, none for the prefill
    return fast.FastDecoder(llm, bucket=1, prefill_bucket=0, triton=triton)


def decode_name(decoder, args) -> str:
    if decoder is None or args.eager:
        return "eager"
    if torch.device(args.device).type != "cuda":
        return "static cache"
    return "static cache + CUDA graph" + ("" if args.no_compile else ", Triton step")


def report(r: dict) -> str:
    """The answer and what it cost, in three lines."""
    lens = sorted(set(r["cache_rows_per_layer"]))
    rows = f"{lens[0]}" if len(lens) == 1 else f"{lens[0]}-{lens[-1]} (layers differ)"
    return (f"{r['answer']}\nkept {r['kept_video_tokens']} of {r['video_tokens']} video tokens ({r['kept_ratio']:.1%}); "
            f"KV cache {rows} of {r['prompt_rows']} rows\nvideo encoding {r['encode_s'] * 1e3:.1f} ms, prefill "
            f"{r['prefill_s'] * 1e3:.1f} ms, decode {r['decode_ms_per_token']:.1f} ms/token over {r['new_tokens']} "
            f"tokens (load {r['load_s']:.1f} s)")


def heatmap(frames, scores, kept, video, model, size=168):
    """Each frame (resized), darkened where layer M's question-to-video attention is low; kept tokens outlined."""
    import torch.nn.functional as F

    from minivtp import png

    T, Nv = video.frames, video.tokens_per_frame
    if getattr(model, "newline", None) == "frame":
        raise ValueError("--heatmap draws a frame's tokens on its grid; with a newline token after every frame "
                         "(mm_newline_position 'frame') that layout is not drawn")
    if model.arrangement in ("tarsier", "llava-video"):  # drop the newline (and separator) tokens: the grid is h x w
        g = model.vision.cfg.grid if model.arrangement == "tarsier" else model.pooled()
        keep_cols = torch.tensor([j for j in range(g * (g + 1)) if j % (g + 1) != g])
        grid_scores = scores.view(T, Nv)[:, keep_cols].view(T, g, g)
        kept_mask = torch.zeros(T * Nv, dtype=torch.bool)
        kept_mask[kept - video.start] = True
        grid_kept = kept_mask.view(T, Nv)[:, keep_cols].view(T, g, g)
    else:
        g = int(Nv**0.5)
        grid_scores = scores.view(T, g, g)
        kept_mask = torch.zeros(T * Nv, dtype=torch.bool)
        kept_mask[kept - video.start] = True
        grid_kept = kept_mask.view(T, g, g)
    # frames that PLLaVA pooled in time: show the first of each group
    pick = torch.linspace(0, len(frames) - 1, T).round().long().tolist()
    imgs = torch.cat([F.interpolate(frames[i].permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear",
                                    antialias=True, align_corners=False) for i in pick])  # (T, 3, size, size)
    level = (grid_scores / grid_scores.max().clamp_min(1e-12))[:, None]  # (T, 1, g, g)
    level = F.interpolate(level, size=(size, size), mode="nearest")
    imgs = imgs * (0.25 + 0.75 * level)
    cols = min(T, 8)
    rows = (T + cols - 1) // cols
    gap = 6
    img = png.canvas(rows * (size + gap) + gap, cols * (size + gap) + gap, png.WHITE)
    cell = size / g
    for t in range(T):
        y0, x0 = gap + (t // cols) * (size + gap), gap + (t % cols) * (size + gap)
        img[y0 : y0 + size, x0 : x0 + size] = imgs[t].permute(1, 2, 0).clamp(0, 255).to(torch.uint8)
        for r, c in grid_kept[t].nonzero().tolist():
            png.outline(img, y0 + round(r * cell), x0 + round(c * cell), max(2, round(cell)), max(2, round(cell)),
                        png.GREEN, width=1)
    return img


def generate_text(args):
    """python -m minivtp generate: greedy text from a LLaMA checkpoint, read by weights.load and our tokenizer."""
    import weights
    from minivtp.generate import generate
    from minivtp.prompts import chat_prompt
    from minivtp.tokenizer import Tokenizer

    check_device(args.device)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    if args.system is not None and not args.chat:
        raise ValueError("--system goes with --chat (without it the prompt is used as it is)")
    t = time.perf_counter()
    model = weights.load(args.weights, dtype=DTYPES[args.dtype], device=args.device)
    tok = Tokenizer.from_file(args.weights)
    load_s = time.perf_counter() - t
    text = args.prompt
    if args.chat:  # ChatML when the tokenizer has its markers (SmolLM2, Qwen2), Vicuna's conversation otherwise
        text = chat_prompt(args.prompt, chatml="<|im_start|>" in tok.added, system=args.system)
    ids = tok.encode(text)
    if not ids:
        raise ValueError("--prompt is empty: there is nothing to continue")
    eos = tok.eos
    if eos is None:  # no eos_token in tokenizer_config.json: the model's config.json says which id ends
        eos = weights.read_config(Path(args.weights)).get("eos_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
    with torch.no_grad():
        embeds = model.embed(torch.tensor([ids], device=args.device))  # (1, N, C)
    decoder = None
    if embeds.is_cuda:  # the readable path, without cuDNN's attention plan for every new cache length
        from minivtp import fast
        decoder = fast.EagerOnGPU(model)
    out = generate(model, embeds, args.max_new_tokens, eos_id=eos, decoder=decoder)
    tokens = out.tokens.tolist()
    print(tok.decode([t for t in tokens if t != eos], skip_special=True), flush=True)
    n = len(tokens)
    decode = f"decode {(n - 1) / out.decode_s:.1f} tokens/s" if n > 1 and out.decode_s > 0 else "no decode step"
    print(f"{n} new tokens at {n / (out.prefill_s + out.decode_s):.1f} tokens/s: prefill of {len(ids)} prompt tokens "
          f"{out.prefill_s * 1e3:.0f} ms, {decode} (load {load_s:.1f} s)", file=sys.stderr)
    return 0


def build_parser() -> Parser:
    """The command line of answer, eval and generate (minivtp/lmms.py reads lmms-eval's model_args with it too)."""
    p = Parser(prog="python -m minivtp", description="minivtp: LLM-VTP on a video LLM")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("answer", help="ask a video a question")
    a.add_argument("--weights", required=True, help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    a.add_argument("--video", required=True, help="video file (needs PyAV), folder of images (needs Pillow), "
                                                  "or .safetensors with a 'frames' tensor")
    a.add_argument("--question", required=True)
    a.add_argument("--alpha", type=float, default=0.1, help="fraction of each frame's tokens kept, (0, 1]; 1 = no pruning")
    a.add_argument("--layer", type=int, default=10, help="M, the layer that prunes, 1..L")
    a.add_argument("--head-pool", default="max", choices=("max", "mean", "min"))
    a.add_argument("--variant", default="paper", choices=("paper", "released"), help=VARIANT_HELP)
    a.add_argument("--method", default="llm-vtp", choices=("llm-vtp", "fastv", "prumerge+", "look-m", "random",
                                                           "complement"),
                   help="how tokens are chosen: LLM-VTP (default); FastV (--alpha of the whole video, --layer K); "
                        "PruMerge+ (in the vision tower, adaptive); Look-M (--recent, --important); baselines")
    a.add_argument("--recent", type=float, default=0.05, help="Look-M: fraction of rows kept as the most recent")
    a.add_argument("--important", type=float, default=0.05, help="Look-M: fraction kept by attention, text first")
    a.add_argument("--merge", default="average", choices=("average", "pivotal", "none"), help="Look-M's merge")
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32", choices=sorted(DTYPES))
    a.add_argument("--template", default=None, help="PLLaVA conversation template (default 'plain')")
    a.add_argument("--heatmap", default=None, help="write the attention / kept-token picture here (PNG)")
    a.add_argument("--fast-decode", action="store_true", help="decode from a static cache with a CUDA graph "
                   "(the default on CUDA; this flag asks for it on other devices too)")
    a.add_argument("--eager", action="store_true", help="decode step by step in Python, the readable path")
    a.add_argument("--no-compile", action="store_true", help="on CUDA, the CUDA graph of the plain decode step, "
                   "without the Triton kernels of the default (which Triton compiles once per machine and keeps)")
    a.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale for unmerged adapters when the directory "
                   "has no adapter_config.json (PLLaVA's released weights: 4)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    e = sub.add_parser("eval", help="a video QA benchmark: MVBench's format, or one as downloaded (--benchmark); "
                                    "torchrun for several GPUs")
    e.add_argument("--weights", required=True, help="checkpoint directory (or a toy directory)")
    e.add_argument("--questions", default=None, help="MVBench-format JSON: a list of questions or task -> list")
    e.add_argument("--videos", default=None, help="folder the questions' video paths are relative to")
    e.add_argument("--benchmark", default=None, choices=("mvbench", "videomme", "egoschema", "videoqa", "vcgbench"),
                   help="read a benchmark as it is downloaded, from --data (instead of --questions and --videos)")
    e.add_argument("--data", default=None, help="the folder a --benchmark was downloaded to (minivtp/benchmarks.py)")
    e.add_argument("--tasks", default=None, help="some of the benchmark's tasks, comma-separated (MVBench: "
                   "'Action Sequence,Episodic Reasoning'; videomme: short,medium,long; videoqa: MSVD_QA,...)")
    e.add_argument("--out", required=True, help="JSON lines, one per question; a rerun skips the ids in it")
    e.add_argument("--method", default="llm-vtp", choices=("llm-vtp", "fastv", "prumerge+", "look-m", "random",
                                                           "complement"))
    e.add_argument("--alpha", type=float, default=1.0, help="fraction kept, (0, 1]; 1 = no pruning")
    e.add_argument("--layer", type=int, default=10)
    e.add_argument("--head-pool", default="max", choices=("max", "mean", "min"))
    e.add_argument("--variant", default="paper", choices=("paper", "released"), help=VARIANT_HELP)
    e.add_argument("--recent", type=float, default=0.05)
    e.add_argument("--important", type=float, default=0.05)
    e.add_argument("--merge", default="average", choices=("average", "pivotal", "none"), help="Look-M's merge")
    e.add_argument("--max-new-tokens", type=int, default=None, help="default 5 (the letter and a few words); 100 "
                   "for open-ended QA, as PLLaVA's scripts")
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32", choices=sorted(DTYPES))
    e.add_argument("--lora-alpha", type=float, default=None)
    e.add_argument("--eager", action="store_true", help="prefill and decode step by step in Python, the readable path")
    e.add_argument("--no-compile", action="store_true", help="on CUDA, the CUDA graphs without torch.compile (the "
                   "default compiles the decoder block once for the loop, fast.compile_blocks, and the "
                   "decode step with autotuned products, fast.FastDecoder(compile=True))")
    e.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    g = sub.add_parser("generate", help="text from a LLaMA checkpoint (SmolLM2: python -m minivtp.smollm2)")
    g.add_argument("--weights", required=True, help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    g.add_argument("--prompt", required=True, help="the text to continue, or with --chat the user's message")
    g.add_argument("--chat", action="store_true", help="wrap the prompt as one user turn: ChatML when the tokenizer "
                   "has <|im_start|>, Vicuna's conversation otherwise")
    g.add_argument("--system", default=None, help="with --chat: the system message (default: none for ChatML, "
                   "Vicuna's own sentence for Vicuna)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate_text(args)
        if args.command == "eval":
            from minivtp import evaluate
            check_device(args.device)
            return evaluate.run(args)
        return answer(args)
    except (ValueError, ImportError) as e:  # every expected problem: a message that names it (or the package)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
