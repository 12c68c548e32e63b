"""python -m minivtp eval: multiple-choice video QA in MVBench's format, with or without pruning, resumable,
on one process or many (torchrun).

    python -m minivtp eval --weights pllava-7b --questions mvbench.json --videos DIR --alpha 0.1 --layer 10 \\
        --out results.jsonl
    torchrun --nproc-per-node 4 -m minivtp eval ... --out results.jsonl     # each rank answers its own share

The questions file is MVBench's: a JSON list of {"video", "question", "candidates", "answer"} (optionally "id",
"task_type", "start", "end"), or an object mapping each task's name to such a list. The prompt is PLLaVA's
(tasks/eval/mvbench: "Question: ...\\nOptions:\\n(A) ...", then "\\nOnly give the best option.", the
eval_mvbench conversation, and "Best option:(" as the start of the answer); the letter is the first of A-G in
the answer, as its check_ans reads it. One JSON line per question (id, task, prediction, letter, answer,
correct, kept ratio, prefill and decode seconds, or the error that stopped it); a rerun skips the ids already in
--out. A summary at the end: accuracy per task and overall, mean kept ratio, seconds per question.

--benchmark mvbench|videomme|egoschema|videoqa|vcgbench --data DIR reads a benchmark as it is downloaded instead
(minivtp/benchmarks.py: its files, PLLaVA's frame rule with MVBench's segments, each benchmark's prompt and letter
rule); each line then also records the video read (its path under DIR) and the indices of the frames read
("video", "frames"), and --tasks picks some of its tasks. Open-ended QA is written out for its GPT judge, EgoSchema
for its server, beside --out.

The toy (`python -m minivtp.toy export-mvbench DIR`) runs through the same loop: its "videos" are feature
files, its options are two-word answers, and its letter is the option whose words the model generated.
"""

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from minivtp import benchmarks
# MVBench's prompt and letter rule live with the benchmarks' readers; --questions uses them too
from minivtp.benchmarks import ANSWER_PROMPT, LETTERS, POST_QUERY, letter_of, qa_text  # noqa: F401
from minivtp.vtp import VideoSpan


def read_questions(path) -> list:
    """The questions as a list of dicts with "id" and "task_type" filled in; a ValueError names a broken file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the questions ({e})") from None
    if isinstance(raw, dict):
        items = [dict(q, task_type=q.get("task_type", task)) for task, qs in raw.items() for q in qs]
    elif isinstance(raw, list):
        items = [dict(q) if isinstance(q, dict) else {"_bad": q} for q in raw]
    else:
        raise ValueError(f"{path}: holds a JSON {type(raw).__name__}; a list of questions (or task -> list) is needed")
    for i, q in enumerate(items):
        q.setdefault("id", str(i))
        q["id"] = str(q["id"])
        q.setdefault("task_type", "all")
    return items


def check_entry(q: dict):
    """The reason a question cannot be asked, or None."""
    if "_bad" in q:
        return f"entry is a {type(q['_bad']).__name__}, not an object"
    for key, kind in (("video", str), ("question", str), ("candidates", list), ("answer", str)):
        if not isinstance(q.get(key), kind):
            return f"entry has no {key} ({kind.__name__})"
    if not 2 <= len(q["candidates"]) <= len(LETTERS):
        return f"entry has {len(q['candidates'])} candidates; 2..{len(LETTERS)} are allowed"
    if q["answer"] not in q["candidates"]:
        return "its answer is not one of its candidates"
    return None


def fast_decoder(llm, device, eager: bool, no_compile: bool):
    """What eval decodes with: on CUDA a loop of questions pays a compile once and gains it back many times, so
    the model is prepared for speed (q+k+v fused, blocks compiled: fast.prepare) and one fast.FastDecoder, its
    decode step compiled with autotuned products (compile=True), serves every question. --no-compile: fused, CUDA
    graphs only. --eager on CUDA: the readable path (fast.EagerOnGPU's kernels); not CUDA: None, the readable
    path (generate's default)."""
    if torch.device(device).type != "cuda":
        return None
    from minivtp import fast
    if eager:
        return fast.EagerOnGPU(llm)
    if not no_compile:
        print("compiling the decoder blocks and an autotuned decode step for this run (once, at the first "
              "questions; --no-compile skips it)", file=sys.stderr, flush=True)  # stdout stays the summary
    fast.prepare(llm, compile=not no_compile)
    return fast.FastDecoder(llm, compile=not no_compile)


class Answerer:
    """Loads a checkpoint once and answers one question at a time: (prediction, letter, facts)."""

    def __init__(self, args):
        from minivtp.cli import load_checkpoint, method_of
        import weights

        self.args = args
        cfg = weights.read_config(Path(args.weights)) if Path(args.weights).is_dir() else {}
        self.toy = cfg.get("model_type") == "minivtp-toy"
        self.method = method_of(args)
        if self.toy:
            from minivtp import toy
            self.model = toy.load(args.weights)
        else:
            self.model, self.tok, _ = load_checkpoint(args)
        self.llm = self.model.llm
        if self.method is not None:  # a bad --layer, ratio or variant is one error now, not one per question
            self.method.resolved(self.llm.cfg.n_layers)
        self.noted = False  # the released count's zero-token note, said once a run
        # by where the model is, not by --device: the toy always runs on the CPU, and compiling it there (what a
        # GPU machine's default --device cuda asked for) cost every eval of the toy a CPU compile
        self.decoder = fast_decoder(self.llm, self.llm.embed.weight.device, args.eager, args.no_compile)

    def __call__(self, q: dict, videos: Path):
        path = videos / q["video"]
        if self.toy:
            return self.ask_toy(q, path)
        from minivtp.vision import read_frames
        frames, _ = read_frames(path, self.model.frames, self.model.sample_indices)
        text, facts = self.generate(frames, qa_text(q) + POST_QUERY, "eval_mvbench", self.args.max_new_tokens or 5)
        prediction = "(" + text
        return prediction, letter_of(prediction), facts

    def generate(self, frames, question: str, template: str, max_new_tokens: int):
        """The model's answer to `question` about `frames` in PLLaVA's conversation `template` (Tarsier and the
        LLaVA-OneVision hosts: their own prompt, then the template's answer prompt), and what it cost."""
        from minivtp.cli import encode_prompt, is_qformer_host, qformer_inputs
        from minivtp.generate import generate
        from minivtp.prompts import PLLAVA_TEMPLATES, build_prompt
        pixels = self.model.preprocess(frames).to(self.args.device)
        kind, extra = self.model.arrangement, {}
        if is_qformer_host(self.model):  # the host's own template (MVBench's for eval_mvbench); the Q-Former reads it too
            ids, extra = qformer_inputs(self.model, self.tok, question.removesuffix(POST_QUERY), self.args.device,
                                        mvbench=template == "eval_mvbench")
        else:
            if kind in ("tarsier", "llava-onevision", "llava-video"):
                text = build_prompt(kind, question, placeholder=self.model.placeholder) + \
                    (PLLAVA_TEMPLATES[template][6] or "")
            else:
                text = build_prompt("pllava", question, template)
            ids = torch.tensor(encode_prompt(self.tok, text, self.model), device=self.args.device)
        merged = self.args.method == "prumerge+"
        with torch.no_grad():
            embeds, video = self.model.prompt(ids, pixels, prumerge=merged, **extra)
        self.note(video)
        out = generate(self.llm, embeds, max_new_tokens, video=video if self.method else None,
                       method=self.method, eos_id=self.tok.eos, decoder=self.decoder)
        answer = self.tok.decode([t for t in out.tokens.tolist() if t != self.tok.eos], skip_special=True)
        n_video = video.unpruned_rows if merged else video.end - video.start
        kept = video.end - video.start if merged else out.kept.numel() if self.method else n_video
        return answer, dict(kept_ratio=kept / n_video, prefill_s=out.prefill_s, decode_s=out.decode_s)

    def ask_benchmark(self, q: dict, benchmark: str) -> dict:
        """One question of a downloaded benchmark: the row's prediction(s), letter, frames read and costs."""
        from minivtp import toy
        frames, indices = benchmarks.read_clip(q, self.args.data, toy.T if self.toy else self.model.frames)
        open_ended = benchmark in benchmarks.OPEN_ENDED
        questions = [None, q["question1"]] if "question1" in q else [None]  # consistency_qa: both, one at a time
        answers, facts = [], dict(kept_ratio=0.0, prefill_s=0.0, decode_s=0.0)
        for second in questions:
            if self.toy:
                text, cost = self.toy_generate(frames, second or q["question"])
            else:
                prompt, template = benchmarks.prompt_of(benchmark, q, second)
                text, cost = self.generate(frames, prompt, template, self.args.max_new_tokens or
                                           (100 if open_ended else 5))  # PLLaVA's scripts: 100 for open-ended QA
            answers.append(text)
            facts = {k: facts[k] + cost[k] / len(questions) for k in facts}
        row = dict(video=q["video"], frames=indices, **facts)
        if open_ended:
            row["prediction"] = benchmarks.open_answer(benchmark, answers[0])
            if len(answers) > 1:
                row["prediction1"] = benchmarks.open_answer(benchmark, answers[1])
            return row
        prediction = "(" + answers[0] if benchmark == "mvbench" and not self.toy else answers[0]
        if self.toy:  # the toy names an object: the option with its two words
            options = q["candidates"]
            letter = LETTERS[options.index(prediction)] if prediction in options else None
        else:
            letter = benchmarks.letter(benchmark, prediction, q)
        return dict(row, prediction=prediction, letter=letter)

    def note(self, video):
        """Say once a run, on stderr, when the released count keeps no token of a frame (cli.zero_count_note)."""
        from minivtp.cli import zero_count_note
        note = zero_count_note(self.method, video)
        if note and not self.noted:
            print(f"note: {note}", file=sys.stderr, flush=True)
            self.noted = True

    def toy_generate(self, frames, question: str):
        """The toy's two-word answer to its question about frames that benchmarks.read_clip read from pictures."""
        from minivtp import toy
        words = question.split()
        if any(w not in toy.ID for w in words):
            raise ValueError(f"the toy knows only its own words ({' '.join(toy.VOCAB)}); the question is {question!r}")
        features = torch.stack([toy.frame_features(f) for f in frames])  # (T, Nv, P)
        self.note(VideoSpan(len(toy.PREFIX), toy.T, toy.NV))  # the span toy.ask prompts with
        answer, out = toy.ask(self.model, toy.Sample(features, [], words, []), method=self.method)
        kept = out.kept.numel() / (toy.T * toy.NV) if self.method else 1.0
        return " ".join(answer), dict(kept_ratio=kept, prefill_s=out.prefill_s, decode_s=out.decode_s)

    def ask_toy(self, q, path):
        from safetensors.torch import load_file
        from minivtp import toy
        try:
            features = load_file(str(path))["features"]
        except Exception as e:  # a missing or broken file: one error line for this question
            raise ValueError(f"{path}: not a toy video ({e})") from None
        sample = toy.Sample(features, [], q["question"].split(), [])
        self.note(VideoSpan(len(toy.PREFIX), toy.T, toy.NV))  # the span toy.ask prompts with
        words, out = toy.ask(self.model, sample, method=self.method)
        prediction = " ".join(words)
        options = q["candidates"]
        letter = LETTERS[options.index(prediction)] if prediction in options else None
        kept = out.kept.numel() / (toy.T * toy.NV) if self.method else 1.0
        return prediction, letter, dict(kept_ratio=kept, prefill_s=out.prefill_s, decode_s=out.decode_s)


def summary(rows: list) -> dict:
    """Accuracy over the questions with a known answer (an error counts as wrong); a row whose "correct" is None
    (open-ended QA, EgoSchema beyond its public 500) is counted under "unscored"."""
    scored = [r for r in rows if r.get("correct") is not None]
    tasks = defaultdict(lambda: [0, 0])
    for r in scored:
        tasks[r["task_type"]][1] += 1
        tasks[r["task_type"]][0] += bool(r["correct"])
    answered = [r for r in rows if "error" not in r]
    return dict(questions=len(rows), correct=sum(bool(r["correct"]) for r in scored),
                accuracy=sum(bool(r["correct"]) for r in scored) / len(scored) if scored else None,
                unscored=len(rows) - len(scored),
                per_task={t: dict(correct=c, total=n, accuracy=c / n) for t, (c, n) in sorted(tasks.items())},
                errors=len(rows) - len(answered), unparsed=sum(1 for r in answered if r.get("letter", "") is None),
                mean_kept_ratio=sum(r["kept_ratio"] for r in answered) / max(1, len(answered)),
                seconds_per_question=sum(r["seconds"] for r in answered) / max(1, len(answered)))


def read_jsonl(path: Path) -> list:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run: that question is asked again
            continue
    return rows


def run(args) -> int:
    import torch.distributed as dist

    from minivtp.cli import check_prumerge_fits
    check_prumerge_fits(args)  # before the questions are read: no question could be answered

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        if torch.device(args.device).type == "cuda":  # one GPU per process: the local rank names it
            local, gpus = int(os.environ.get("LOCAL_RANK", rank)), torch.cuda.device_count()
            if local >= gpus:
                raise ValueError(f"process {local} on this machine would use cuda:{local}, but torch sees {gpus} "
                                 f"GPU(s): start at most {gpus} (torchrun --nproc-per-node), or give --device cpu")
            args.device = f"cuda:{local}"
        dist.init_process_group("nccl" if torch.device(args.device).type == "cuda" else "gloo")
    out = Path(args.out)
    benchmark = getattr(args, "benchmark", None)
    if benchmark:
        if not args.data:
            raise ValueError("--benchmark needs --data DIR, the folder the benchmark was downloaded to")
        questions = benchmarks.load(benchmark, args.data, args.tasks.split(",") if args.tasks else None)
    else:
        if not args.questions or not args.videos:
            raise ValueError("give --questions FILE and --videos DIR, or --benchmark NAME and --data DIR")
        if getattr(args, "tasks", None):
            raise ValueError("--tasks picks tasks of a --benchmark")
        questions = read_questions(args.questions)
    shard = out.with_name(f"{out.name}.rank{rank}") if world > 1 else out
    # keep the whole lines of a run that was killed, drop the torn last one (--out itself is rank 0's to touch)
    for f in {shard, out} if rank == 0 else {shard}:
        if f.exists():
            f.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(f)))
    if world > 1:
        dist.barrier()
    done = {r["id"] for r in read_jsonl(out)} | {r["id"] for r in read_jsonl(shard)}
    mine = [q for i, q in enumerate(questions) if i % world == rank and q["id"] not in done]
    answer = Answerer(args)
    videos = None if benchmark else Path(args.videos)
    start = time.perf_counter()
    with open(shard, "a") as f:
        for n, q in enumerate(mine, 1):
            row = benchmark_row(answer, q, benchmark) if benchmark else questions_row(answer, q, videos)
            f.write(json.dumps(row) + "\n")
            f.flush()
            status = "error: " + row["error"] if "error" in row else \
                {True: "right", False: "wrong", None: "answered"}[row.get("correct")]
            print(f"[rank {rank}] {n}/{len(mine)} {q['task_type']}: {row.get('letter')} {status}  "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if world > 1:
        dist.barrier()
        if rank == 0:  # merge the shards into --out, in question order, and keep what --out already held
            rows = {r["id"]: r for r in read_jsonl(out)}
            for r in range(world):
                part = out.with_name(f"{out.name}.rank{r}")
                rows.update({row["id"]: row for row in read_jsonl(part)})
            ordered = [rows[q["id"]] for q in questions if q["id"] in rows]
            out.write_text("".join(json.dumps(r) + "\n" for r in ordered))
            for r in range(world):
                out.with_name(f"{out.name}.rank{r}").unlink(missing_ok=True)
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        done_rows = read_jsonl(out)
        res = summary(done_rows)
        if benchmark:  # what its own scorer reads, and how to run it
            res["notes"] = benchmarks.write_outputs(benchmark, out, done_rows, questions)
        print(json.dumps(res) if args.json else format_summary(res))
    return 0


def questions_row(answer: Answerer, q: dict, videos: Path) -> dict:
    """The line for one question of a --questions file (MVBench's format, or the toy's)."""
    row = dict(id=q["id"], task_type=q["task_type"])
    t0 = time.perf_counter()
    problem = check_entry(q)
    try:
        if problem:
            raise ValueError(f"question {q['id']}: {problem}")
        prediction, letter, facts = answer(q, videos)
        truth = LETTERS[q["candidates"].index(q["answer"])]
        # the toy names any object in the video: each of those answers is right ("right_answers")
        right = prediction in q["right_answers"] if "right_answers" in q else letter == truth
        row.update(prediction=prediction, letter=letter, answer=truth, correct=right,
                   seconds=time.perf_counter() - t0, **facts)
    except ValueError as e:  # a bad question or video: recorded, and the run goes on
        row.update(error=str(e), correct=False)
    return row


def benchmark_row(answer: Answerer, q: dict, benchmark: str) -> dict:
    """The line for one question of a --benchmark: with the video and frames read. "correct" is None where there
    is nothing to compare with here (open-ended QA; EgoSchema's questions without a public answer)."""
    row = dict(id=q["id"], task_type=q["task_type"], video=q["video"])
    row.update({k: q[k] for k in ("layout", "segment") if k in q})  # MVBench: which download, which part of it
    t0 = time.perf_counter()
    unscored = benchmark in benchmarks.OPEN_ENDED or q.get("answer", "") is None
    try:
        if "_error" in q:
            raise ValueError(q["_error"])
        row.update(answer.ask_benchmark(q, benchmark), seconds=time.perf_counter() - t0)
        if "letter" in row:  # multiple choice
            row.update(answer=q["answer"], correct=None if unscored else row["letter"] == q["answer"])
    except ValueError as e:  # a missing file, video or frame: recorded with its path, and the run goes on
        row.update(error=str(e), correct=None if unscored else False)
    return row


def format_summary(s: dict) -> str:
    if s["accuracy"] is None:  # open-ended QA: its score is a judge's, not ours
        head = f"{s['questions']} questions, none scored here"
    else:
        head = f"accuracy {s['accuracy']:.3f} ({s['correct']} of {s['questions'] - s.get('unscored', 0)})"
    lines = [f"{head}; errors {s['errors']}, "
             f"answers without a letter {s['unparsed']}; mean kept ratio {s['mean_kept_ratio']:.3f}; "
             f"{s['seconds_per_question']:.3f} s per question"]
    if s.get("unscored") and s["accuracy"] is not None:
        lines.append(f"  {s['unscored']} questions without a public answer: not in the accuracy")
    for task, t in s["per_task"].items():
        lines.append(f"  {task:28s} {t['accuracy']:.3f}  ({t['correct']}/{t['total']})")
    return "\n".join(lines + s.get("notes", []))
