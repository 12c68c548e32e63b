"""What a one-shot user pays: the whole `python -m minivtp answer` command, from the shell to the printed answer,
cold and warm, against a transformers script doing the same; and torch's on-disk compile cache across processes.

    python -m bench.oneshot --out OUT                     # everything, OUT/oneshot.json (--parts splits it)
    python -m bench.oneshot --out OUT --parts answer,transformers
    python -m bench.oneshot --out OUT --dir /tmp/pllava7b # keep the 14 GB checkpoint there, reused by later runs
    python -m bench.oneshot --out OUT --tiny              # the same code at a tiny shape, on the CPU

First a PLLaVA-7B-shaped checkpoint is written with bench.common.write_checkpoint (random bf16 weights in the
released layout: CLIP ViT-L/14-336, projector, Vicuna-7B PEFT-wrapped with unmerged LoRA r 128 on q_proj / v_proj,
4 shards, tokenizer.json, 16 random 360 x 640 frames), unless --dir already holds one of this shape. Then every
command below runs in a fresh process, timed from its start to its exit (wall_s), --repeats times in a row. Each
series gets an empty torch compile cache of its own (TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR in a temporary
folder): its first run is cold (nothing compiled on disk), the next ones warm (what an earlier process left). The
checkpoint's files are in the page cache for all of them (written or read just before; dropping it needs root).

Parts (--parts):
  answer               python -m minivtp answer ... --alpha 0.1 --layer 10 --max-new-tokens N --json, N = 5 and 72:
                       its own JSON splits the wall time into load, video encoding, prefill and decode (Triton's
                       compile of its kernels included, cold); the rest (process start, imports, frames, tokenizer, CUDA's
                       start-up) is `outside_s`. One more run in the same compile cache asks with --alpha 0.2: a
                       cache of another length, to show whether the kernels on disk serve it ("warm, other length")
  answer-no-compile    the same with --no-compile (the other length too): the CUDA graph of the plain step, no Triton
  transformers         the same question through transformers in a fresh process (`python -m bench.oneshot
                       --transformers-child`): the same shards loaded into CLIPVisionModel, PLLaVA's projector and
                       LlamaForCausalLM (LoRA merged as PEFT merges it), the same frames and preprocessing
                       (minivtp.hosts.llava.preprocess), the prompt through `tokenizers`, CLIP, pooling, generate
                       (greedy, exactly N tokens, its default cache)
  transformers-static  the same with cache_implementation="static" (compiles the decode step: cold vs warm cache)
  eval-cache           python -m minivtp eval on --questions (3) questions of that video, compiled (eval's
                       default on CUDA): its compile cold, then warm from torch's on-disk cache; and once with
                       --no-compile for reference. Per-question seconds from its JSON lines.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import common

PARTS = ("answer", "answer-no-compile", "transformers", "transformers-static", "eval-cache")
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float32: "float32"}


TIMEOUT_S = 300  # one process; a hung one is reported as such and the rest of the run goes on


def run(cmd, env, label):
    """One fresh process, timed from its start to its exit: (wall seconds, its last stdout line as JSON or None)."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        wall = time.perf_counter() - t
        err = (e.stderr or b"")[-1500:]
        err = err.decode(errors="replace") if isinstance(err, bytes) else err
        print(f"{label}: killed after {TIMEOUT_S} s", flush=True)
        return dict(wall_s=wall, rc=None, error=f"timed out after {TIMEOUT_S} s: {err}"), None
    wall = time.perf_counter() - t
    lines = p.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if p.returncode == 0 and lines else None
    except json.JSONDecodeError:
        out = None
    row = dict(wall_s=wall, rc=p.returncode)
    if out is None:
        row["error"] = (p.stderr.strip() or p.stdout.strip())[-1500:]
        print(f"{label}: rc {p.returncode} after {wall:.1f} s\n{row['error'][-600:]}", flush=True)
    return row, out


def compile_env(cache: Path) -> dict:
    """The environment of a series: torch's compile artefacts (Inductor's and Triton's) in `cache`, nowhere else."""
    return dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache), TRITON_CACHE_DIR=str(cache / "triton"))


def series(cmd, label, repeats, tmp, describe, names=()):
    """`repeats` fresh processes of cmd(i) sharing one empty compile cache: run 1 cold, the others warm (or as
    `names` calls them)."""
    cache = Path(tempfile.mkdtemp(prefix="inductor-", dir=tmp))
    rows = []
    for i in range(repeats):
        row, out = run(cmd(i), compile_env(cache), label)
        row["run"] = names[i] if i < len(names) else "cold" if i == 0 else "warm"
        if out is not None:
            row.update(describe(out, row["wall_s"]))
        rows.append(row)
        print(f"{label} run {i + 1} ({row['run']}): {row['wall_s']:.2f} s" +
              (f"  ({row['note']})" if "note" in row else ""), flush=True)
    return rows


def describe_answer(out, wall):
    inside = out["load_s"] + out["encode_s"] + out["prefill_s"] + out["decode_s"]
    return dict(load_s=out["load_s"], encode_s=out["encode_s"], prefill_s=out["prefill_s"], decode_s=out["decode_s"],
                decode_ms_per_token=out["decode_ms_per_token"], new_tokens=out["new_tokens"],
                prompt_rows=out["prompt_rows"], cache_rows=out["cache_rows"], outside_s=wall - inside,
                note=f"load {out['load_s']:.2f}, encode {out['encode_s']:.2f}, prefill {out['prefill_s']:.3f}, "
                     f"decode {out['decode_s']:.2f} s ({out['decode_ms_per_token']:.1f} ms/token, "
                     f"{out['new_tokens']} tokens), the rest {wall - inside:.2f} s")


def describe_hf(out, wall):
    inside = out["import_s"] + out["load_s"] + out["frames_s"] + out["encode_s"] + out["generate_s"]
    return dict(out, outside_s=wall - inside,
                note=f"import transformers {out['import_s']:.2f}, load {out['load_s']:.2f}, frames "
                     f"{out['frames_s']:.2f}, CLIP + projector {out['encode_s']:.2f}, "
                     f"generate {out['generate_s']:.2f} s, the rest {wall - inside:.2f} s")


def write_questions(d: Path, video: Path, n: int) -> Path:
    """n multiple-choice questions on one video, in MVBench's format (what `python -m minivtp eval` reads)."""
    qs = [dict(id=f"q{i}", video=video.name, question=f"{common.QUESTION} ({i})",
               candidates=["opening a door", "reading a book", "closing the window"], answer="reading a book")
          for i in range(n)]
    path = d / "questions.json"
    path.write_text(json.dumps(qs))
    return path


def answer_cmd(ckpt, s, n_new, alpha=0.1, *extra):
    return [sys.executable, "-m", "minivtp", "answer", "--weights", str(ckpt.path), "--video", str(ckpt.frames),
            "--question", common.QUESTION, "--alpha", str(alpha), "--layer", "10", "--max-new-tokens", str(n_new),
            "--device", s.device, "--dtype", DTYPE_NAMES[s.dtype], "--json", *extra]


def hf_cmd(ckpt, s, n_new, static):
    return [sys.executable, "-m", "bench.oneshot", "--transformers-child", "--dir", str(ckpt.path),
            "--max-new-tokens", str(n_new), "--device", s.device, "--dtype", DTYPE_NAMES[s.dtype]] + \
        (["--static"] if static else [])


def eval_cmd(ckpt, s, questions, out, *extra):
    return [sys.executable, "-m", "minivtp", "eval", "--weights", str(ckpt.path), "--questions", str(questions),
            "--videos", str(ckpt.path), "--out", str(out), "--alpha", "0.1", "--layer", "10", "--device", s.device,
            "--dtype", DTYPE_NAMES[s.dtype], "--json", *extra]


def eval_series(ckpt, s, questions, tmp, repeats):
    res = {}
    for label, extra in (("compiled", ()), ("no-compile", ("--no-compile",))):
        outs = [Path(tmp) / f"eval-{label}-{i}.jsonl" for i in range(repeats)]

        def describe(out, wall, outs=outs):
            done = [json.loads(line) for f in outs if f.exists() for line in f.read_text().splitlines()]
            last = [r for r in done if r.get("id")][-out["questions"]:]
            secs = [r["seconds"] for r in last]
            return dict(questions=out["questions"], seconds_per_question=out["seconds_per_question"],
                        question_s=secs, outside_s=wall - sum(secs),
                        note=f"questions {', '.join(f'{x:.2f}' for x in secs)} s; the rest (start, load) "
                             f"{wall - sum(secs):.2f} s")

        n = repeats if label == "compiled" else 1
        if not common.cuda(s):
            if label == "no-compile":
                common.skip("eval --no-compile", "on a CPU eval compiles nothing anyway")
                continue
            print("note: eval compiles only on CUDA; here the series runs the uncompiled path", flush=True)
        res[label] = series(lambda i: eval_cmd(ckpt, s, questions, outs[i], *extra), f"eval {label}", n, tmp, describe)
    return res


@torch.no_grad()
def transformers_child(args):
    """The transformers script, in this (fresh) process: load, frames, CLIP, generate. Prints one JSON line."""
    t = time.perf_counter()
    import transformers  # noqa: F401
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    from minivtp.hosts.prompts import build_prompt
    from minivtp.hosts.llava import pllava_pool, preprocess
    import_s = time.perf_counter() - t

    t = time.perf_counter()
    d, device, dtype = Path(args.dir), torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # safetensors wants the index
    cfg = json.loads((d / "config.json").read_text())
    clip, llm, projector = common.hf_models(cfg["text_config"], cfg["vision_config"], device, dtype, init=False)
    want = {"llm": {}, "clip": {}, "projector": {}}
    # CLIPVisionModel's own keys: "vision_model.*" in transformers 4, without the prefix in 5
    clip_prefix = "vision_model." if next(iter(clip.state_dict())).startswith("vision_model.") else ""
    lora = {}
    for shard in sorted(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values())):
        for name, tensor in load_file(d / shard, device=str(device)).items():
            if name.startswith("language_model.base_model.model."):
                name = name[len("language_model.base_model.model."):]
                if ".lora_" in name:  # q_proj.lora_A.default.weight -> q_proj.weight, "A"
                    target, rest = name.split(".lora_")
                    lora.setdefault(target + ".weight", {})[rest[0]] = tensor
                    continue
                want["llm"][name.replace(".base_layer.", ".")] = tensor
            elif name.startswith("vision_tower.vision_model."):
                want["clip"][clip_prefix + name[len("vision_tower.vision_model."):]] = tensor
            elif name.startswith("multi_modal_projector.linear_"):  # linear_1 -> 0, linear_2 -> 2 (GELU between)
                i, rest = name[len("multi_modal_projector.linear_"):].split(".", 1)
                want["projector"][f"{2 * (int(i) - 1)}.{rest}"] = tensor
    alpha = json.loads((d / "adapter_config.json").read_text())["lora_alpha"]
    for target, ab in lora.items():  # PEFT's merge: W + (alpha / r) B A
        W = want["llm"][target]
        want["llm"][target] = (W.float() + alpha / ab["A"].shape[0] * (ab["B"].float() @ ab["A"].float())).to(W.dtype)
    for model, key in ((llm, "llm"), (clip, "clip"), (projector, "projector")):
        model.load_state_dict(want[key], strict=True)
    del want, lora
    load_s = common.clock(device) - t

    t = time.perf_counter()
    frames = load_file(d / "frames.safetensors")["frames"]  # (T, H, W, 3) uint8
    pixels = preprocess(frames, clip.config.image_size).to(device)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    ids = torch.tensor(tok.encode(build_prompt("pllava", common.QUESTION, None)).ids, device=device)
    frames_s = common.clock(device) - t

    t = time.perf_counter()
    grid = clip.config.image_size // clip.config.patch_size
    h = clip(pixels.to(dtype), output_hidden_states=True).hidden_states[-2][:, 1:]  # (T, P, Cv)
    video = pllava_pool(projector(h), grid, tuple(cfg["pooling_shape"]))  # (T' h' w', C)
    encode_s = common.clock(device) - t

    t = time.perf_counter()
    i = (ids == cfg["image_token_index"]).nonzero().item()
    e = llm.get_input_embeddings()
    embeds = torch.cat([e(ids[:i]), video.to(dtype), e(ids[i + 1:])])[None]  # (1, N, C)
    gen = dict(cache_implementation="static") if args.static else {}
    out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], device=device,
                       dtype=torch.long), max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                       do_sample=False, pad_token_id=0, **gen)
    generate_s = common.clock(device) - t
    print(json.dumps(dict(import_s=import_s, load_s=load_s, frames_s=frames_s, encode_s=encode_s, generate_s=generate_s,
                          prompt_rows=embeds.shape[1], new_tokens=out.shape[1], static=args.static)))
    return 0


def summary(res):
    print("\n| command | tokens | run | s | where the time went |\n| --- | --- | --- | --- | --- |")
    for key, rows in res.get("runs", {}).items():
        for r in rows:
            cell = f"{r['wall_s']:.2f}" if "error" not in r else "error"
            print(f"| {key.split(' | ')[0]} | {key.split(' | ')[1]} | {r['run']} | {cell} | {r.get('note', '')} |")
    runs = res.get("runs", {})
    for key in runs:
        name, n = key.split(" | ")
        if name != "answer":
            continue
        warm = [r for r in runs[key] if r["run"] == "warm"] or runs[key][:1]
        ours = warm[-1].get("wall_s")
        for peer in ("transformers", "transformers-static"):
            theirs = runs.get(f"{peer} | {n}", [{}])[-1]  # its last run: warm when --repeats > 1
            if ours and "wall_s" in theirs and "error" not in theirs:
                print(f"{n} tokens, warm: the whole answer command {ours:.2f} s, {peer} {theirs['wall_s']:.2f} s: "
                      f"{theirs['wall_s'] / ours:.2f}x")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="folder for oneshot.json")
    p.add_argument("--parts", default="", help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    p.add_argument("--dir", type=Path, default=None, help="where the checkpoint is written (default: a temporary "
                   "folder, removed at the end); reused when it already holds one of this shape")
    p.add_argument("--repeats", type=int, default=2, help="fresh processes per command (1: cold only)")
    p.add_argument("--questions", type=int, default=3, help="questions per eval process")
    p.add_argument("--tokens", default="", help="answer lengths, comma-separated (default 5,72; --tiny: 4)")
    p.add_argument("--tiny", action="store_true", help="a tiny config, on the CPU when there is no GPU: a smoke test")
    # the transformers script's own process (what the transformers parts start)
    p.add_argument("--transformers-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--max-new-tokens", type=int, default=72, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--static", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.transformers_child:
        return transformers_child(args)
    if args.out is None:
        p.error("--out is required")
    chosen = common.parts(args.parts, PARTS)
    s = common.shape(args.tiny)
    tokens = [int(x) for x in args.tokens.split(",") if x] or ([4] if args.tiny else list(s.new_tokens))
    if ("transformers" in chosen or "transformers-static" in chosen):
        try:
            import transformers  # noqa: F401
        except ImportError:
            common.skip("the transformers parts", "transformers is not installed (pip install transformers)")
            chosen = [c for c in chosen if not c.startswith("transformers")]
    if "transformers-static" in chosen and not common.cuda(s):
        common.skip("transformers-static", "its static cache compiles the decode step: minutes on a CPU")
        chosen.remove("transformers-static")
    res = dict(common.machine(), script="oneshot", tiny=args.tiny, parts=chosen, tokens=tokens, runs={})

    def save():
        return common.write_json(args.out, "oneshot.json", res)

    with tempfile.TemporaryDirectory(prefix="oneshot-") as tmp:
        t = time.perf_counter()
        ckpt = common.write_checkpoint(args.dir or Path(tmp) / "checkpoint", s)
        if common.cuda(s):
            torch.cuda.empty_cache()  # the GPU for the processes timed below
        res["checkpoint"] = dict(path=str(ckpt.path), shards=ckpt.shards, write_or_reuse_s=time.perf_counter() - t,
                                 gb=sum(f.stat().st_size for f in ckpt.path.glob("*.safetensors")) / 1e9)
        print(f"checkpoint {ckpt.path}: {len(ckpt.shards)} shards, {res['checkpoint']['gb']:.1f} GB "
              f"({res['checkpoint']['write_or_reuse_s']:.0f} s)", flush=True)
        row, _ = run([sys.executable, "-c", "import torch; print('{}')"], dict(os.environ), "import torch")
        res["python_import_torch_s"] = row["wall_s"]
        print(f"a fresh python importing torch: {row['wall_s']:.2f} s", flush=True)
        for n in tokens:
            if "answer" in chosen:  # and once more, warm, for a cache of another length (alpha 0.2)
                k = args.repeats
                names = ["cold"] + ["warm"] * (k - 1) + ["warm, other length"]
                res["runs"][f"answer | {n}"] = series(lambda i: answer_cmd(ckpt, s, n, 0.2 if i == k else 0.1),
                                                      f"answer {n} tokens", k + 1, tmp, describe_answer, names)
                save()
            if "answer-no-compile" in chosen:
                k = args.repeats
                names = ["cold"] + ["warm"] * (k - 1) + ["warm, other length"]
                res["runs"][f"answer-no-compile | {n}"] = series(
                    lambda i: answer_cmd(ckpt, s, n, 0.2 if i == k else 0.1, "--no-compile"),
                    f"answer --no-compile {n} tokens", k + 1, tmp, describe_answer, names)
                save()
            for part in ("transformers", "transformers-static"):
                if part in chosen:
                    res["runs"][f"{part} | {n}"] = series(lambda i: hf_cmd(ckpt, s, n, part.endswith("static")),
                                                          f"{part} {n} tokens", args.repeats, tmp, describe_hf)
                    save()
        if "eval-cache" in chosen:
            questions = write_questions(Path(tmp), ckpt.frames, args.questions)
            res["eval"] = eval_series(ckpt, s, questions, tmp, args.repeats)
    path = save()
    summary(res)
    for label, rows in res.get("eval", {}).items():
        print(f"eval {label}: " + ", ".join(f"{r['run']} {r['wall_s']:.1f} s ({r.get('note', r.get('error', ''))})"
                                            for r in rows))
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
