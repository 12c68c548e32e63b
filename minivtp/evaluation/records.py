"""What a result needs to be trusted: what produced it, a summary that keeps apart what was answered, answered
wrong and not answered, resume only under the same settings, and nothing a user had lost.

    settings(args, "mvbench")     # what must match for two rows to belong to one result (method, dtype, checkpoint)
    produced_by(args, frames)     # the rest a row records: the checkpoint's path and hashes, frames, minivtp's version
    check_eval(args, questions)   # every check that can run before a model loads; what --out already holds
    write_summary(out, summary)   # <out>.summary.json, written whole or not at all

Every row of eval's --out carries "settings" and "produced_by"; a rerun with --out naming a file whose rows
another setting produced is refused with one line naming each difference (old -> new), before anything is read
or written. The checkpoint's fingerprint is cheap: the sha256 of config.json and of each safetensors file's
header (its tensor names, shapes, dtypes and offsets), not of the gigabytes after it.
"""

import dataclasses
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

SUMMARY_SUFFIX = ".summary.json"  # beside --out
BROKEN_SUFFIX = ".broken"  # beside --out: the lines of it that were not whole rows, kept aside, one JSON line each


def version() -> str:
    try:
        from importlib.metadata import version as installed
        return installed("minivtp")
    except Exception:  # run from a checkout that was never installed
        import re
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


# ------------------------------------------------------------------------------------------------------------------
# What produced a result


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors_header(file: Path) -> bytes:
    """The first 8 bytes (the header's length, little-endian) and the JSON header they announce."""
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{file}: not a safetensors file (shorter than its 8-byte header length)")
        n = struct.unpack("<Q", head)[0]
        body = f.read(min(n, 100_000_000))
        if len(body) != n:
            raise ValueError(f"{file}: not a safetensors file (its header says {n} bytes; the file is shorter)")
    return head + body


def fingerprint(weights) -> dict:
    """The checkpoint directory, the sha256 of its config.json and of each safetensors file's header, and one hash
    over them all (what the settings compare: the same files under another path are the same checkpoint)."""
    path = Path(weights).resolve()
    config = path / "config.json"
    files = {"config.json": sha256(config.read_bytes()) if config.is_file() else None}
    for f in sorted(path.glob("*.safetensors")):
        files[f.name] = sha256(safetensors_header(f))
    whole = sha256(json.dumps(files, sort_keys=True).encode())
    return dict(path=str(path), sha256=whole, files=files)


def settings(args, benchmark=None) -> dict:
    """What must be the same for rows to belong to one result: the pruning method with every field of its
    generate.Method (or "none" at alpha 1, "prumerge+" in the vision tower), dtype, the answer's length, LoRA's
    scale, the benchmark, and the checkpoint's fingerprint."""
    from minivtp.cli import method_of
    method = method_of(args)
    if method is not None:  # a generate.Method, or a rival of minivtp/rivals/ with its own fields
        s = dict(dataclasses.asdict(method))
        s.pop("name", None)
        s["method"] = method.name
    else:
        s = dict(method="prumerge+" if args.method == "prumerge+" else "none", alpha=1.0 if args.method !=
                 "prumerge+" else None)
    s.update(dtype=args.dtype, max_new_tokens=args.max_new_tokens, lora_alpha=args.lora_alpha,
             benchmark=benchmark or ("questions" if hasattr(args, "questions") else None), checkpoint=fingerprint(args.weights)["sha256"])
    return s


def produced_by(args, frames=None, benchmark=None) -> dict:
    """What a row records beside its settings: where the checkpoint is and its hashes, the questions' source and
    tasks, frames read per video, the device and minivtp's version."""
    source = dict(data=str(Path(args.data).resolve())) if benchmark else \
        dict(questions=str(Path(args.questions).resolve()), videos=str(Path(args.videos).resolve()))
    return dict(checkpoint=fingerprint(args.weights), **source, tasks=getattr(args, "tasks", None), frames=frames,
                device=str(args.device), minivtp=version())


def produced_by_answer(args, frames=None) -> dict:
    """What `answer --json` records beside its settings: the checkpoint's path and hashes, frames, device, version."""
    return dict(checkpoint=fingerprint(args.weights), frames=frames, device=str(args.device), minivtp=version())


def differences(old: dict, new: dict) -> list:
    """'name old -> new' for each setting that differs."""
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


# ------------------------------------------------------------------------------------------------------------------
# Reading --out: whole rows, broken lines named and set aside, a file that is not ours left alone


def is_row(x) -> bool:
    return isinstance(x, dict) and isinstance(x.get("id"), str) and "task_type" in x


def read_rows(path: Path):
    """(the whole rows of a JSON-lines file, first of each id; [(line number, text)] of the lines that are not)."""
    rows, broken, seen = [], [], set()
    if not path.is_file():
        return rows, broken
    data = path.read_bytes().decode("utf-8", errors="replace")
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not is_row(row):
            broken.append((i, line))
        elif row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows, broken


def check_out(path: Path, new: dict, what="--out"):
    """A ValueError unless `path` can take this run's rows: a file of rows that the same settings produced (or
    none yet), in a folder that can be written. Returns (rows, broken lines)."""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name for the results (JSON lines)")
    check_folder(path, what)
    rows, broken = read_rows(path)
    if path.is_file() and path.stat().st_size and not rows:
        raise ValueError(f"{what} {path} is not a results file of minivtp eval (no line of it is a row with an id); "
                         "it is left as it is: give another --out")
    unmarked = [r for r in rows if not isinstance(r.get("settings"), dict)]
    if unmarked:
        raise ValueError(f"{what} {path}: {len(unmarked)} of its rows record no settings (question "
                         f"{unmarked[0]['id']}), so they cannot be resumed as this run's; give another --out")
    for r in rows:
        diff = differences(r["settings"], new)
        if diff:
            n = sum(1 for x in rows if x["settings"] != new)
            raise ValueError(f"{what} {path} holds {n} row(s) made with other settings: {', '.join(diff)}; "
                             "rerun with its settings to resume it, or give another --out (nothing was written)")
    return rows, broken


def check_folder(path: Path, what: str):
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{what} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {path}: the folder {folder} cannot be written")


def set_aside(path: Path, rows: list, broken: list):
    """Keep the broken lines of `path` in <path>.broken (appended, one JSON object each: file, line, text), say so
    on stderr, and leave `path` with its whole rows, each id once (replaced atomically)."""
    if not broken:
        return
    side = path.with_name(path.name + BROKEN_SUFFIX)
    with open(side, "a") as f:
        for i, text in broken:
            f.write(json.dumps(dict(file=str(path), line=i, text=text)) + "\n")
    for i, text in broken:
        print(f"warning: {path}:{i}: not a whole result row ({text[:40]!r}); kept in {side}, its question is asked "
              "again", file=sys.stderr, flush=True)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_atomic(path: Path, text: str):
    """The file whole or not at all: written beside it, flushed to disk, then moved over it (os.replace)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def summary_path(out: Path) -> Path:
    return out.with_name(out.name + SUMMARY_SUFFIX)


def write_summary(out: Path, summary: dict, settings: dict, produced: dict):
    write_atomic(summary_path(out), json.dumps(dict(summary, settings=settings, produced_by=produced), indent=1) + "\n")


# ------------------------------------------------------------------------------------------------------------------
# Before the model loads


def check_weights(weights):
    """The checkpoint directory exists and its config.json names a model minivtp loads (weights.check_video_llm)."""
    import weights as w
    path = Path(weights)
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory")  # weights.open_checkpoint's words
    w.check_video_llm(path, w.read_config(path))


def check_eval(args, questions: list, benchmark=None):
    """Everything eval can check before the model loads, reading and writing nothing of --out. Returns
    (this run's settings, the rows --out already holds, its broken lines)."""
    check_weights(args.weights)
    out = Path(args.out)
    summary = summary_path(out)
    if summary.exists():
        try:
            ours = "settings" in json.loads(summary.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError):
            ours = False
        if not ours:
            raise ValueError(f"{summary} exists and is not a summary of minivtp eval; it is left as it is: "
                             "give another --out")
    if not benchmark:
        videos = Path(args.videos)
        if not videos.is_dir():
            raise ValueError(f"--videos {videos}: no such folder")
        listed = [q["video"] for q in questions if isinstance(q.get("video"), str)]
        absent = [v for v in listed if not (videos / v).exists()]
        if listed and len(absent) == len(listed):
            raise ValueError(f"--videos {videos}: none of the {len(listed)} videos the questions name is there "
                             f"(the first: {videos / absent[0]})")
        if absent:  # said once the model has loaded (eval prints it), after any error that stops the run
            args._note = (f"note: {len(absent)} of {len(listed)} videos are not under {videos} (the first: "
                          f"{absent[0]}); their questions are recorded as not answered")
    new = settings(args, benchmark)
    rows, broken = check_out(out, new)
    return new, rows, broken


def pick_tasks(questions: list, tasks, source) -> list:
    """The questions of --tasks (comma-separated task_type names), or a ValueError naming an unknown one."""
    if not tasks:
        return questions
    wanted = [t.strip() for t in tasks.split(",") if t.strip()]
    known = sorted({q["task_type"] for q in questions})
    for t in wanted:
        if t not in known:
            raise ValueError(f"--tasks {t!r} is not a task_type of {source}: {', '.join(known)}")
    return [q for q in questions if q["task_type"] in wanted]


def check_answer(args):
    """What `answer` can check before the model loads: the checkpoint, the video, the --heatmap's folder."""
    check_weights(args.weights)
    if not Path(args.video).exists():
        raise ValueError(f"--video {args.video}: no such file or folder")
    if args.heatmap:
        if Path(args.heatmap).is_dir():
            raise ValueError(f"--heatmap {args.heatmap} is a folder; give a file name for the picture (PNG)")
        check_folder(Path(args.heatmap), "--heatmap")


# ------------------------------------------------------------------------------------------------------------------
# Not answered is not wrong


def not_answered(row: dict, error: str, path=None, kind=None, scorable=True) -> dict:
    """`row` as a question that was not answered: the error, the path it concerns, why (a missing file or video,
    one that could not be read, a bad question), and correct None: it is kept apart from the wrong answers."""
    if kind is None:
        kind = "other" if path is None else "missing" if not Path(path).exists() else "unreadable"
    row.update(error=error, correct=None, not_answered=kind)
    if path is not None:
        row["path"] = str(path)
    if not scorable:  # a question with no public answer: in no accuracy, answered or not
        row["scorable"] = False
    return row


REASONS = {"missing": "missing file or video", "unreadable": "unreadable file or video", "bad question": "bad question",
           "other": "other error"}


def summarize(rows: list) -> dict:
    """The counts (questions, answered, wrong, not answered and why, unscored), accuracy over the answered questions
    with a known answer, accuracy counting those not answered as wrong, and both per task."""
    def counts(rs):
        errors = [r for r in rs if "error" in r]
        answered = [r for r in rs if "error" not in r]
        scored = [r for r in answered if r.get("correct") is not None]
        right = sum(bool(r["correct"]) for r in scored)
        missed = sum(1 for r in errors if r.get("scorable", True))  # not answered, but it had an answer to match
        return dict(correct=right, total=len(scored), accuracy=right / len(scored) if scored else None,
                    not_answered=len(errors),
                    accuracy_counting_errors=right / (len(scored) + missed) if scored or missed else None), \
            errors, answered
    top, errors, answered = counts(rows)
    why = {}
    for r in errors:
        k = r.get("not_answered", "other")
        why[k] = why.get(k, 0) + 1
    per_task = {}
    for task in sorted({r["task_type"] for r in rows}):  # the tasks with something to score, answered or not
        t = counts([r for r in rows if r["task_type"] == task])[0]
        if t["accuracy_counting_errors"] is not None:
            per_task[task] = t
    return dict(questions=len(rows), answered=len(answered), correct=top["correct"],
                wrong=top["total"] - top["correct"], accuracy=top["accuracy"],
                accuracy_counting_errors=top["accuracy_counting_errors"],
                unscored=sum(1 for r in answered if r.get("correct") is None), per_task=per_task,
                errors=len(errors), not_answered=why,
                unparsed=sum(1 for r in answered if r.get("letter", "") is None),
                mean_kept_ratio=sum(r.get("kept_ratio", 0.0) for r in answered) / max(1, len(answered)),
                seconds_per_question=sum(r.get("seconds", 0.0) for r in answered) / max(1, len(answered)))


def format_summary(s: dict) -> str:
    scored = s["answered"] - s["unscored"]
    if s["accuracy"] is None and s["accuracy_counting_errors"] is None:
        head = f"{s['questions']} questions, none scored here"  # open-ended QA: its score is a judge's, not ours
    elif s["accuracy"] is None:
        head = f"accuracy: none of the {s['questions']} questions was answered"
    else:
        head = f"accuracy {s['accuracy']:.3f} ({s['correct']} of {scored} answered)"
    if s["errors"]:
        why = ", ".join(f"{n} {REASONS.get(k, k)}" for k, n in sorted(s["not_answered"].items()))
        if s["accuracy_counting_errors"] is not None:
            head += f"; {s['accuracy_counting_errors']:.3f} counting the not answered as wrong"
        head += f"; not answered {s['errors']} ({why})"
    lines = [f"{head}; answers without a letter {s['unparsed']}; mean kept ratio {s['mean_kept_ratio']:.3f}; "
             f"{s['seconds_per_question']:.3f} s per question"]
    if s.get("unscored") and s["accuracy"] is not None:
        lines.append(f"  {s['unscored']} questions without a public answer: not in the accuracy")
    for task, t in s["per_task"].items():
        acc = "  -  " if t["accuracy"] is None else f"{t['accuracy']:.3f}"
        more = f", {t['not_answered']} not answered" if t["not_answered"] else ""
        if t["total"] or t["not_answered"]:
            lines.append(f"  {task:28s} {acc}  ({t['correct']}/{t['total']}{more})")
    return "\n".join(lines + s.get("notes", []))
