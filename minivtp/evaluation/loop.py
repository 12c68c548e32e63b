"""python -m minivtp eval: multiple-choice video QA in MVBench's format, with or without pruning, resumable,
on one process or many (torchrun).

    python -m minivtp eval --weights pllava-7b --questions mvbench.json --videos DIR --alpha 0.1 --layer 10 \\
        --out results.jsonl
    torchrun --nproc-per-node 4 -m minivtp eval ... --out results.jsonl     # each rank answers its own share
    python -m minivtp eval ... --batch-size 8       # 8 questions at a time (minivtp/fast/batch.py), the same lines

The questions file is MVBench's: a JSON list of {"video", "question", "candidates", "answer"} (optionally "id",
"task_type", "start", "end"), or an object mapping each task's name to such a list. The prompt is PLLaVA's
(tasks/eval/mvbench: "Question: ...\\nOptions:\\n(A) ...", then "\\nOnly give the best option.", the
eval_mvbench conversation, and "Best option:(" as the start of the answer); the letter is the first of A-G in
the answer, as its check_ans reads it. One JSON line per question (id, task, prediction, letter, answer,
correct, kept ratio, prefill and decode seconds, or the error that stopped it, counted as not answered), with the
settings and checkpoint that produced it (minivtp/evaluation/records.py); a rerun with the same settings skips the ids already
in --out, one with other settings is refused. A summary at the end, printed and in <out>.summary.json: accuracy
per task and overall (over the answered questions, and counting the not answered as wrong), mean kept ratio,
seconds per question. --tasks picks task_types of the questions file.

--benchmark mvbench|videomme|egoschema|videoqa|vcgbench --data DIR reads a benchmark as it is downloaded instead
(minivtp/evaluation/benchmarks.py: its files, PLLaVA's frame rule with MVBench's segments, each benchmark's prompt and letter
rule); each line then also records the video read (its path under DIR) and the indices of the frames read
("video", "frames"), and --tasks picks some of its tasks. Open-ended QA is written out for its GPT judge, EgoSchema
for its server, beside --out.

The toy (`python -m minivtp toy export-mvbench DIR`) runs through the same loop: its "videos" are feature
files, its options are two-word answers, and its letter is the option whose words the model generated.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from minivtp.evaluation import benchmarks, records

# MVBench's prompt and letter rule live with the benchmarks' readers; --questions uses them too
from minivtp.evaluation.benchmarks import (  # noqa: F401
    ANSWER_PROMPT,
    LETTERS,
    POST_QUERY,
    letter_of,
    qa_text,
)
from minivtp.evaluation import pipeline
from minivtp.evaluation.pipeline import Pipeline
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


class Answerer:
    """Loads a checkpoint once (evaluation/pipeline.py) and answers questions: (prediction, letter, facts).

    Its question methods are generators: where the model must answer they yield the pipeline's Question (the LLM's
    part of it) and go on with the Generation sent back (`answered` sends generate's, one question at a time;
    fast.batch.answer_rows sends those of generate_many for --batch-size questions at once)."""

    def __init__(self, args, method):
        """`method`: what cli.method_of made of the command line (a Method, a rival, or None)."""
        import weights
        from minivtp.cli import decode_step

        self.args = args
        cfg = weights.read_config(Path(args.weights)) if Path(args.weights).is_dir() else {}
        self.toy = cfg.get("model_type") == "minivtp-toy"
        self.method = method
        from minivtp.lab import toy
        if self.toy:
            self.model = toy.load(args.weights)
            self.llm = self.model.llm
        else:
            # a loop of questions pays a compile once and gains it back many times: the tuned step on CUDA
            step = decode_step(args, "tuned") if torch.device(args.device).type == "cuda" else None
            self.pipe = Pipeline.load(args.weights, args.dtype, args.device, args.lora_alpha, self.method, step,
                                      loop=True)
            self.llm = self.pipe.vm.llm
        self.frames = toy.T if self.toy else self.pipe.vm.frames  # what every row records
        if hasattr(self.method, "resolved"):  # a bad --layer, ratio or variant is one error now, not one per question
            self.method.resolved(self.llm.cfg.n_layers)
        self.noted = False  # the released count's zero-token note, said once a run
        # by where the model is, not by --device: the toy always runs on the CPU, and compiling it there (what a
        # GPU machine's default --device cuda asked for) cost every eval of the toy a CPU compile
        self.decoder = None if self.toy else self.pipe.decoder
        self.in_llm = None if hasattr(self.method, "prompt") else self.method  # PruMerge+ prunes before the LLM
        self.batch_decoder = None  # made by fast.batch.answer_rows for --batch-size > 1

    def run(self, q):
        """generate's answer to one Question, with this run's decoder."""
        return pipeline.generate_for(self.llm, q, self.in_llm, self.decoder)

    def __call__(self, q: dict, videos: Path):
        path = videos / q["video"]
        if self.toy:
            return (yield from self.ask_toy(q, path))
        frames, _ = self.pipe.read(path)
        text, facts = yield from self.generate(frames, qa_text(q) + POST_QUERY, "eval_mvbench",
                                               self.args.max_new_tokens or 5)
        prediction = "(" + text
        return prediction, letter_of(prediction), facts

    def generate(self, frames, question: str, template: str, max_new_tokens: int):
        """The model's answer to `question` about `frames` in PLLaVA's conversation `template` (the other hosts:
        their own prompt, then the template's answer prompt), and what it cost."""
        job = self.pipe.begin(frames, question, self.method, max_new_tokens, template)
        out = yield job.question
        a = self.pipe.finish(job, out)
        self.say(a.note)
        return a.text, dict(kept_ratio=a.kept_ratio, prefill_s=out.prefill_s, decode_s=out.decode_s)

    def ask_benchmark(self, q: dict, benchmark: str) -> dict:
        """One question of a downloaded benchmark: the row's prediction(s), letter, frames read and costs."""
        from minivtp.lab import toy
        frames, indices = benchmarks.read_clip(q, self.args.data, toy.T if self.toy else self.pipe.vm.frames)
        open_ended = benchmark in benchmarks.OPEN_ENDED
        questions = [None, q["question1"]] if "question1" in q else [None]  # consistency_qa: both, one at a time
        answers, facts = [], dict(kept_ratio=0.0, prefill_s=0.0, decode_s=0.0)
        for second in questions:
            if self.toy:
                text, cost = yield from self.toy_generate(frames, second or q["question"])
            else:
                prompt, template = benchmarks.prompt_of(benchmark, q, second)
                text, cost = yield from self.generate(frames, prompt, template, self.args.max_new_tokens or
                                                      (100 if open_ended else 5))  # PLLaVA's: 100 for open-ended QA
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

    def say(self, note):
        """Say a note once a run, on stderr (the released count keeping no token of a frame: cli.zero_count_note)."""
        if note and not self.noted:
            print(f"note: {note}", file=sys.stderr, flush=True)
            self.noted = True

    def note(self, video):
        from minivtp.cli import zero_count_note
        self.say(zero_count_note(self.method, video))

    def toy_generate(self, frames, question: str):
        """The toy's two-word answer to its question about frames that benchmarks.read_clip read from pictures."""
        from minivtp.lab import toy
        words = question.split()
        if any(w not in toy.ID for w in words):
            raise ValueError(f"the toy knows only its own words ({' '.join(toy.VOCAB)}); the question is {question!r}")
        features = torch.stack([toy.frame_features(f) for f in frames])  # (T, Nv, P)
        self.note(VideoSpan(len(toy.PREFIX), toy.T, toy.NV))  # the span toy.ask prompts with
        answer, out = yield from self.ask_toy_model(toy.Sample(features, [], words, []))
        kept = out.kept.numel() / (toy.T * toy.NV) if self.method else 1.0
        return " ".join(answer), dict(kept_ratio=kept, prefill_s=out.prefill_s, decode_s=out.decode_s)

    def ask_toy_model(self, sample):
        """toy.ask's two words, the Question yielded: (the words, Generation)."""
        from minivtp.lab import toy
        from minivtp.fast.batch import Question
        embeds, video = self.model.prompt(sample.features[None], [sample.question])
        out = yield Question(embeds, video if self.method is not None else None, 2)
        return [toy.VOCAB[t] for t in out.tokens.tolist()], out

    def ask_toy(self, q, path):
        from safetensors.torch import load_file

        from minivtp.lab import toy
        try:
            features = load_file(str(path))["features"]
        except Exception as e:  # a missing or broken file: one error line for this question
            raise ValueError(f"{path}: not a toy video ({e})") from None
        sample = toy.Sample(features, [], q["question"].split(), [])
        self.note(VideoSpan(len(toy.PREFIX), toy.T, toy.NV))  # the span toy.ask prompts with
        words, out = yield from self.ask_toy_model(sample)
        prediction = " ".join(words)
        options = q["candidates"]
        letter = LETTERS[options.index(prediction)] if prediction in options else None
        kept = out.kept.numel() / (toy.T * toy.NV) if self.method else 1.0
        return prediction, letter, dict(kept_ratio=kept, prefill_s=out.prefill_s, decode_s=out.decode_s)


def summary(rows: list) -> dict:
    """Accuracy over the answered questions with a known answer, and counting those not answered (a missing or
    unreadable file, a bad question) as wrong; a row whose "correct" is None without an error (open-ended QA,
    EgoSchema beyond its public 500) is counted under "unscored" (records.summarize)."""
    return records.summarize(rows)


def read_jsonl(path: Path) -> list:
    """The whole rows of a results file, each id once (records.read_rows; broken lines are not rows)."""
    return records.read_rows(Path(path))[0]


def run(args) -> int:
    import torch.distributed as dist

    from minivtp.cli import method_of
    from minivtp.evaluation.pipeline import check_fits
    method = method_of(args)  # a bad --alpha or --variant is one line before anything is read
    check_fits(args.weights, method)  # before the questions are read: no question could be answered
    if getattr(args, "batch_size", 1) < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be >= 1 (the questions answered at a time)")

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
        questions = records.pick_tasks(read_questions(args.questions), args.tasks, args.questions)
    # before the model loads, nothing written: the checkpoint's config, the folders, the videos, what --out holds
    settings, held, broken = records.check_eval(args, questions, benchmark)
    shard = out.with_name(f"{out.name}.rank{rank}") if world > 1 else out
    shard_rows, shard_broken = records.check_out(shard, settings) if world > 1 else ([], [])
    answer = Answerer(args, method)
    if getattr(args, "_note", None) and rank == 0:
        print(args._note, file=sys.stderr, flush=True)
    produced = records.produced_by(args, answer.frames, benchmark)
    # the lines a killed run tore are kept aside, their questions asked again (--out itself is rank 0's to touch)
    if rank == 0:
        records.set_aside(out, held, broken)
    records.set_aside(shard, shard_rows, shard_broken) if world > 1 else None
    if world > 1:
        dist.barrier()
    done = {r["id"] for r in held} | {r["id"] for r in shard_rows}
    mine = [q for i, q in enumerate(questions) if i % world == rank and q["id"] not in done]
    videos = None if benchmark else Path(args.videos)
    start = time.perf_counter()
    def row_of(q):  # the question's row, as a generator that yields where the model answers (see Answerer)
        return benchmark_row(answer, q, benchmark) if benchmark else questions_row(answer, q, videos)

    if getattr(args, "batch_size", 1) > 1:  # B questions at a time, rows in question order (minivtp/fast/batch.py)
        from minivtp.fast.batch import answer_rows
        rows = answer_rows(answer, mine, row_of, args.batch_size)
    else:
        rows = (answered(answer, row_of(q)) for q in mine)
    with open(shard, "a") as f:
        for n, (q, row) in enumerate(zip(mine, rows), 1):
            f.write(json.dumps(dict(row, settings=settings, produced_by=produced)) + "\n")
            f.flush()
            status = "not answered: " + row["error"] if "error" in row else \
                (row["letter"] or "no letter") + " " + {True: "right", False: "wrong", None: "answered"}[row["correct"]] \
                if "letter" in row else "answered"
            print(f"[rank {rank}] {n}/{len(mine)} {q['task_type']}: {status}  "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if world > 1:
        dist.barrier()
        if rank == 0:  # merge the shards into --out, in question order, and keep what --out already held
            rows = {r["id"]: r for r in read_jsonl(out)}
            for r in range(world):
                part = out.with_name(f"{out.name}.rank{r}")
                rows.update({row["id"]: row for row in read_jsonl(part)})
            ids = [q["id"] for q in questions]
            ordered = [rows[i] for i in ids if i in rows] + [r for i, r in rows.items() if i not in set(ids)]
            records.write_atomic(out, "".join(json.dumps(r) + "\n" for r in ordered))
            for r in range(world):
                out.with_name(f"{out.name}.rank{r}").unlink(missing_ok=True)
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        ids = {q["id"] for q in questions}  # this run's questions (--tasks): not every row --out holds
        done_rows = [r for r in read_jsonl(out) if r["id"] in ids]
        res = summary(done_rows)
        if benchmark:  # what its own scorer reads, and how to run it
            res["notes"] = benchmarks.write_outputs(benchmark, out, done_rows, questions)
        records.write_summary(out, res, settings, produced)
        print(json.dumps(res) if args.json else format_summary(res))
    return 0


def answered(answer: Answerer, row):
    """Run a row generator to its row, each Question it yields answered by generate (a ValueError thrown back in)."""
    try:
        prompt = next(row)
        while True:
            try:
                out = answer.run(prompt)
            except ValueError as e:  # a prompt generate refuses: thrown into the row, which records it
                prompt = row.throw(e)
                continue
            prompt = row.send(out)
    except StopIteration as done:
        return done.value


def questions_row(answer: Answerer, q: dict, videos: Path) -> dict:
    """The line for one question of a --questions file (MVBench's format, or the toy's)."""
    row = dict(id=q["id"], task_type=q["task_type"])
    t0 = time.perf_counter()
    problem = check_entry(q)
    try:
        if problem:
            raise ValueError(f"question {q['id']}: {problem}")
        prediction, letter, facts = yield from answer(q, videos)
        truth = LETTERS[q["candidates"].index(q["answer"])]
        # the toy names any object in the video: each of those answers is right ("right_answers")
        right = prediction in q["right_answers"] if "right_answers" in q else letter == truth
        row.update(prediction=prediction, letter=letter, answer=truth, correct=right,
                   seconds=time.perf_counter() - t0, **facts)
    except ValueError as e:  # a bad question or video: recorded as not answered, and the run goes on
        path = None if problem else videos / q["video"]
        records.not_answered(row, str(e), path, kind="bad question" if problem else None)
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
        row.update((yield from answer.ask_benchmark(q, benchmark)), seconds=time.perf_counter() - t0)
        if "letter" in row:  # multiple choice
            row.update(answer=q["answer"], correct=None if unscored else row["letter"] == q["answer"])
    except ValueError as e:  # a missing file, video or frame: recorded with its path, and the run goes on
        path = q.get("_path") or (Path(answer.args.data) / q["video"] if q.get("video") else None)
        kind = q.get("_kind") or (None if "_error" not in q or "_path" in q else "bad question")
        records.not_answered(row, str(e), path, kind, scorable=not unscored)
    return row


def format_summary(s: dict) -> str:
    return records.format_summary(s)
