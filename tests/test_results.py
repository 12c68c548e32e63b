"""Results a paper can trust (minivtp/evaluation/records.py): every row of eval's --out and `answer --json` records what
produced it; <out>.summary.json keeps answered, wrong and not answered apart; a rerun with other settings is
refused naming them; no failing run changes a file a user had; broken lines are named and kept aside; --tasks
filters the run and the summary; config.json's architecture is checked before a tensor is read; the heatmap says
what it shows. On the toy and on tiny checkpoints that transformers writes."""

import contextlib
import dataclasses
import hashlib
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from minivtp import checkpoint
from minivtp.lab import png, toy
from minivtp.generate import Method

ROOT = Path(__file__).resolve().parents[1]
TIMES = ("seconds", "prefill_s", "decode_s")


def main(*args):
    """python -m minivtp ARGS in this process: (exit code, stdout, stderr)."""
    from minivtp.__main__ import main as cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("toybench")
    toy.export_mvbench(d, n=12, seed=77)
    return d


def toy_eval(bench, out, *more, questions=None):
    return main("eval", "--weights", toy.ASSETS, "--questions", questions or bench / "questions.json", "--videos",
                bench / "videos", "--out", out, "--device", "cpu", *more)


def header_sha(file):
    """sha256 of a safetensors file's 8-byte length and the JSON header it announces (the format's own layout)."""
    data = Path(file).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    json.loads(data[8 : 8 + n])  # it is the header
    return hashlib.sha256(data[: 8 + n]).hexdigest()


def test_rows_and_the_summary_record_what_produced_them(bench, tmp_path):
    out = tmp_path / "r.jsonl"
    code, stdout, err = toy_eval(bench, out, "--alpha", 0.5, "--layer", 1, "--json")
    assert code == 0, err
    rows = lines(out)
    want = dataclasses.asdict(Method("llm-vtp", alpha=0.5, layer=1))  # every field of the method that ran
    want["method"] = want.pop("name")
    files = {"config.json": hashlib.sha256((toy.ASSETS / "config.json").read_bytes()).hexdigest(),
             "model.safetensors": header_sha(toy.ASSETS / "model.safetensors")}
    import tomllib
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for r in rows:
        s, p = r["settings"], r["produced_by"]
        assert {k: s[k] for k in want} == want
        assert s["dtype"] == "float32" and s["benchmark"] == "questions" and s["max_new_tokens"] is None
        assert p["checkpoint"]["path"] == str(Path(toy.ASSETS).resolve()) and p["checkpoint"]["files"] == files
        assert s["checkpoint"] == p["checkpoint"]["sha256"]
        assert p["frames"] == toy.T and p["minivtp"] == version and p["device"] == "cpu"
        assert p["questions"] == str((bench / "questions.json").resolve())
    summary = json.loads((tmp_path / "r.jsonl.summary.json").read_text())
    assert summary["settings"] == rows[0]["settings"] and summary["produced_by"] == rows[0]["produced_by"]
    printed = json.loads(stdout)
    assert {k: summary[k] for k in printed} == printed
    right = sum(r["correct"] for r in rows)
    assert summary["questions"] == summary["answered"] == 12 and summary["errors"] == 0
    assert summary["correct"] == right and summary["wrong"] == 12 - right
    assert summary["accuracy"] == summary["accuracy_counting_errors"] == pytest.approx(right / 12)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_a_rerun_with_other_settings_is_refused_naming_each(bench, tmp_path):
    out = tmp_path / "r.jsonl"
    assert toy_eval(bench, out, "--alpha", 0.5, "--layer", 1)[0] == 0
    before = out.read_bytes(), (tmp_path / "r.jsonl.summary.json").read_bytes()
    code, stdout, err = toy_eval(bench, out, "--method", "fastv", "--alpha", 0.1, "--layer", 2)
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: --out {out} holds 12 row(s) made with other settings: ")
    for change in ("alpha 0.5 -> 0.1", "layer 1 -> 2", "method 'llm-vtp' -> 'fastv'"):
        assert change in err
    assert "dtype" not in err and "checkpoint" not in err  # only what differs
    assert (out.read_bytes(), (tmp_path / "r.jsonl.summary.json").read_bytes()) == before
    # a half-done file resumed with another alpha: refused too, not mixed
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:5]))
    half = out.read_bytes()
    code, _, err = toy_eval(bench, out, "--alpha", 0.1, "--layer", 1)
    assert code == 2 and "alpha 0.5 -> 0.1" in err and out.read_bytes() == half
    # the same settings resume: the 7 questions left, each id once
    code, _, err = toy_eval(bench, out, "--alpha", 0.5, "--layer", 1)
    assert code == 0 and err.count("[rank 0]") == 7
    assert sorted(r["id"] for r in lines(out)) == sorted(f"{i:05d}" for i in range(12))


def test_no_failing_run_changes_a_file(bench, tmp_path, llava):
    ours = tmp_path / "ours.jsonl"
    assert toy_eval(bench, ours, "--layer", 1)[0] == 0
    theirs = tmp_path / "notes.txt"
    theirs.write_text("my notes, not results\n")
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"id": 1}]))
    intern = tmp_path / "internvl-llava"  # LLaVA's tensors under a config that names another model
    shutil.copytree(llava[0], intern)
    cfg = json.loads((intern / "config.json").read_text())
    (intern / "config.json").write_text(json.dumps(dict(cfg, architectures=["InternVLChatModel"])))
    files = {f: f.read_bytes() for f in (ours, tmp_path / "ours.jsonl.summary.json", theirs, array)}
    q, v = bench / "questions.json", bench / "videos"
    cases = {
        "weights": (["--weights", tmp_path / "nowhere", "--questions", q, "--videos", v, "--out", ours],
                    f"{tmp_path / 'nowhere'}: not a directory"),
        "architecture": (["--weights", intern, "--questions", q, "--videos", v, "--out", ours],
                         "architecture InternVLChatModel (model_type 'llava')"),
        "questions": (["--weights", toy.ASSETS, "--questions", tmp_path / "q.json", "--videos", v, "--out", ours],
                      "cannot read the questions"),
        "not ours": (["--weights", toy.ASSETS, "--questions", q, "--videos", v, "--out", theirs],
                     "is not a results file of minivtp eval"),
        "array": (["--weights", toy.ASSETS, "--questions", q, "--videos", v, "--out", array],
                  "is not a results file of minivtp eval"),
        "folder": (["--weights", toy.ASSETS, "--questions", q, "--videos", v, "--out", tmp_path],
                   "is a folder"),
        "missing folder": (["--weights", toy.ASSETS, "--questions", q, "--videos", v, "--out",
                            tmp_path / "no" / "r.jsonl"], "does not exist"),
        "videos": (["--weights", toy.ASSETS, "--questions", q, "--videos", tmp_path, "--out", ours],
                   "none of the 12 videos"),
    }
    for name, (args, want) in cases.items():
        code, stdout, err = main("eval", *args, "--layer", 1, "--device", "cpu")
        assert code == 2 and err.count("\n") == 1 and want in err, (name, err)
        assert "loading shard" not in err and "[rank 0]" not in err  # refused before the model loaded
    assert {f: f.read_bytes() for f in files} == files
    assert not (tmp_path / "no").exists() and not list(tmp_path.glob("*.broken"))
    # a summary file beside --out that is not ours is not replaced either
    other = tmp_path / "fresh.jsonl"
    (tmp_path / "fresh.jsonl.summary.json").write_text("[1, 2]")
    code, _, err = toy_eval(bench, other, "--layer", 1)
    assert code == 2 and "is not a summary of minivtp eval" in err and not other.exists()


def test_broken_lines_are_named_kept_aside_and_asked_again(bench, tmp_path):
    out = tmp_path / "r.jsonl"
    assert toy_eval(bench, out, "--layer", 1)[0] == 0
    first = out.read_text().splitlines()
    torn = first[:2] + ["garbage, not JSON", first[2]] + first[4:11] + [first[11][:25]]
    out.write_text("\n".join(torn))  # line 3 garbage, question 4 gone, the last one cut short
    code, _, err = toy_eval(bench, out, "--layer", 1)
    assert code == 0, err
    assert f"warning: {out}:3: not a whole result row" in err and f"warning: {out}:12: not a whole" in err
    assert err.count("[rank 0]") == 2  # question 4 and the torn 12th
    kept = lines(tmp_path / "r.jsonl.broken")
    assert [(k["line"], k["text"]) for k in kept] == [(3, "garbage, not JSON"), (12, first[11][:25])]
    got = lines(out)
    assert sorted(r["id"] for r in got) == sorted(json.loads(x)["id"] for x in first)  # each question once
    by_id = {r["id"]: r for r in untimed(got)}
    assert all(by_id[r["id"]] == r for r in untimed(json.loads(x) for x in first))  # asked again: the same rows


def test_missing_videos_are_not_answered_and_not_wrong(bench, tmp_path):
    qs = json.loads((bench / "questions.json").read_text())
    qs[3] = dict(qs[3], video="gone.safetensors")
    qs[7] = dict(qs[7], video="also/gone.safetensors")
    qs.append(dict(qs[0], id="bad", candidates=None))
    f = tmp_path / "q.json"
    f.write_text(json.dumps(qs))
    out = tmp_path / "r.jsonl"
    code, stdout, err = toy_eval(bench, out, "--alpha", 0.2, "--layer", 1, questions=f)
    assert code == 0, err
    assert "note: 2 of 13 videos are not under" in err
    rows = {r["id"]: r for r in lines(out)}
    for i, name in ((qs[3]["id"], "gone.safetensors"), (qs[7]["id"], "also/gone.safetensors")):
        r = rows[i]
        assert r["not_answered"] == "missing" and r["correct"] is None and r["path"] == str(bench / "videos" / name)
        assert name in r["error"]
    assert rows["bad"]["not_answered"] == "bad question" and rows["bad"]["correct"] is None
    answered = [r for r in rows.values() if "error" not in r]
    right = sum(r["correct"] for r in answered)
    s = json.loads((tmp_path / "r.jsonl.summary.json").read_text())
    assert s["answered"] == 10 and s["errors"] == 3 and s["not_answered"] == {"missing": 2, "bad question": 1}
    assert s["correct"] == right and s["wrong"] == 10 - right
    assert s["accuracy"] == pytest.approx(right / 10) and s["accuracy_counting_errors"] == pytest.approx(right / 13)
    # the printed summary gives both accuracies and says how many were not answered and why
    head = stdout.splitlines()[0]
    assert f"accuracy {right / 10:.3f} ({right} of 10 answered)" in head
    assert f"{right / 13:.3f} counting the not answered as wrong" in head
    assert "not answered 3 (1 bad question, 2 missing file or video)" in head


def test_tasks_filter_the_run_and_the_summary(bench, tmp_path):
    qs = json.loads((bench / "questions.json").read_text())
    tasks = sorted({q["task_type"] for q in qs})
    assert len(tasks) >= 2
    out = tmp_path / "r.jsonl"
    code, stdout, err = toy_eval(bench, out, "--layer", 1, "--tasks", tasks[0], "--json")
    assert code == 0, err
    first = [q["id"] for q in qs if q["task_type"] == tasks[0]]
    assert [r["id"] for r in lines(out)] == first and json.loads(stdout)["questions"] == len(first)
    code, stdout, err = toy_eval(bench, out, "--layer", 1, "--tasks", tasks[1], "--json")
    second = [q for q in qs if q["task_type"] == tasks[1]]
    s = json.loads(stdout)  # this run's task only, though --out holds both
    assert code == 0 and s["questions"] == len(second) and list(s["per_task"]) == [tasks[1]]
    assert len(lines(out)) == len(first) + len(second)
    code, _, err = toy_eval(bench, out, "--layer", 1, "--tasks", "name a planet")
    assert code == 2 and f"--tasks 'name a planet' is not a task_type of {bench / 'questions.json'}" in err


def test_tasks_filter_a_benchmarks_summary(tmp_path):
    pytest.importorskip("av", reason="the fake trees hold real video files: pip install av")
    import benchtrees
    data = tmp_path / "mvbench"
    data.mkdir()
    benchtrees.mvbench(data)
    out = tmp_path / "r.jsonl"
    code, _, err = main("eval", "--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out", out,
                        "--tasks", "Action Sequence,Object Shuffle", "--device", "cpu")
    assert code == 0, err
    code, stdout, err = main("eval", "--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out", out,
                             "--tasks", "Action Sequence", "--device", "cpu", "--json")
    s = json.loads(stdout)
    assert code == 0 and err.count("[rank 0]") == 0  # all done already
    assert list(s["per_task"]) == ["Action Sequence"] and s["questions"] == s["per_task"]["Action Sequence"]["total"]


def test_progress_lines_name_the_letter_or_say_there_is_none(bench, tmp_path):
    qs = json.loads((bench / "questions.json").read_text())[:3]
    qs.append(dict(qs[0], id="missing", video="gone.safetensors"))
    f = tmp_path / "q.json"
    f.write_text(json.dumps(qs))
    code, _, err = toy_eval(bench, tmp_path / "r.jsonl", "--layer", 1, questions=f)
    progress = [x for x in err.splitlines() if x.startswith("[rank 0]")]
    assert code == 0 and len(progress) == 4 and not any("None" in x for x in progress)
    assert all(re.search(r": ([A-G]|no letter) (right|wrong)  \d+ s$", x) for x in progress[:3]), progress
    assert re.search(r": not answered: .*gone\.safetensors", progress[3])


def write_config_only(path, config, archs):
    """A directory with what transformers writes for a config (no weights needed: it is refused before)."""
    config.architectures = archs
    config.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind,arch", [("LlavaNextVideoConfig", "LlavaNextVideoForConditionalGeneration"),
                                       ("InternVLConfig", "InternVLForConditionalGeneration")])
def test_an_unsupported_architecture_is_refused_by_name(kind, arch, tmp_path):
    import transformers
    import weights
    d = write_config_only(tmp_path / "ckpt", getattr(transformers, kind)(), [arch])
    with pytest.raises(weights.CheckpointError) as e:
        weights.load_video_llm(d)
    msg = str(e.value)
    assert f"architecture {arch}" in msg and "_text" not in msg
    assert all(k in msg for k in weights.HOSTS)  # the list of what is supported, from the one table
    video = tmp_path / "clip.safetensors"
    save_file({"frames": torch.zeros(2, 8, 8, 3, dtype=torch.uint8)}, video)
    code, _, err = main("answer", "--weights", d, "--video", video, "--question", "Why?", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and f"architecture {arch}" in err  # no TypeError


def test_the_pickle_advice_is_a_command_that_works(llava, tmp_path):
    import weights
    plain, _, hf = llava
    d = tmp_path / "pickled"  # what older transformers wrote: config.json, pytorch_model.bin, the tokenizer
    d.mkdir()
    torch.save(hf.state_dict(), d / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(plain / name, d)
    with pytest.raises(weights.CheckpointError) as e:
        weights.load_video_llm(d)
    msg = str(e.value)
    assert "LlavaForConditionalGeneration" in msg and "AutoModelForCausalLM" not in msg
    command = msg.split("(needs pip install transformers): ", 1)[1]
    run = subprocess.run(["bash", "-c", command.replace("python -c", f"{sys.executable} -c", 1)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    new = tmp_path / "pickled-safetensors"
    ours, ref = weights.load_video_llm(new), weights.load_video_llm(plain)
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (new / "tokenizer.json").read_bytes() == (plain / "tokenizer.json").read_bytes()


def test_the_pickle_advice_says_so_where_no_command_converts(tmp_path):
    """ST-LLM's class is not in transformers: no from_pretrained command exists, and the advice says so plainly."""
    import weights
    (tmp_path / "config.json").write_text(json.dumps(dict(model_type="st_llm_hf", architectures=["STLLMForCausalLM"])))
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model-00001-of-00002.bin")
    with pytest.raises(weights.CheckpointError) as e:
        checkpoint.shard_files(tmp_path)
    assert "transformers has no STLLMForCausalLM, so no from_pretrained command converts it" in str(e.value)
    assert "torch.load(f, weights_only=True)" in str(e.value)


def read_png(path):
    """(H, W, 3) uint8 from the PNGs png.write_png writes (8-bit RGB, filter 0 on every row)."""
    data = Path(path).read_bytes()
    pos, idat, size = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            size = struct.unpack(">II", data[pos + 8 : pos + 16])
        elif kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    W, H = size
    raw = torch.frombuffer(bytearray(zlib.decompress(idat)), dtype=torch.uint8).view(H, 1 + 3 * W)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(H, W, 3)


def test_answer_records_its_question_video_frames_and_titles_its_heatmap(llava, tmp_path):
    from minivtp.lab import picture
    from minivtp.hosts.llava import sample_indices
    _, pllava, _ = llava
    video = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (11, 30, 40, 3), dtype=torch.uint8)}, video)
    question = "What is the man doing?"
    code, stdout, err = main("answer", "--weights", pllava, "--video", video, "--question", question, "--alpha", 0.5,
                             "--layer", 2, "--max-new-tokens", 3, "--device", "cpu", "--dtype", "float32", "--json",
                             "--heatmap", tmp_path / "kept.png")
    assert code == 0, err
    d = json.loads(stdout)
    seg = 11 / 4  # PLLaVA's rule: the middle frame of each of 4 equal segments of 11
    assert d["question"] == question and d["video"] == str(video)
    assert d["frames"] == [int(seg / 2 + seg * i) for i in range(4)] == sample_indices(11, 4)
    assert d["settings"]["alpha"] == 0.5 and d["settings"]["layer"] == 2 and d["settings"]["method"] == "llm-vtp"
    assert d["produced_by"]["checkpoint"]["files"]["model.safetensors"] == header_sha(pllava / "model.safetensors")
    img = read_png(tmp_path / "kept.png")
    # the title: the question, then M, alpha and the kept count, drawn in the picture's font at scale 2
    title = [f"Q: {question}", f"M=2  ALPHA=0.5  KEPT {d['kept_video_tokens']} OF {d['video_tokens']} VIDEO TOKENS "
             "(GREEN OUTLINE)"]
    for k, text in enumerate(title):
        ink = picture.render(text, 2)
        y = 8 + k * (picture.HEIGHT + 3) * 2
        region = img[y : y + ink.shape[0], 8 : 8 + ink.shape[1]]
        assert torch.equal((region == 0).all(-1), ink), text
    # the colour scale: png.heat's colours from 0 at the left to 1 at the right, on one row below the frames
    def near(pixel, colour):  # within 3 of 255: a colour the scale passes a pixel off its stop
        return max(abs(a - b) for a, b in zip(pixel.tolist(), colour)) <= 3
    W = img.shape[1]
    rows = [y for y in range(img.shape[0]) if all(near(img[y, 8 + round(v * (W - 17))], png.heat(v))
                                                  for v in (0.0, 0.25, 0.5, 0.75, 1.0))]
    assert len(rows) >= 10, "no colour scale"  # a bar, not a line that happens to match


def test_answer_checks_the_video_and_the_heatmap_folder_before_loading(llava, tmp_path):
    _, pllava, _ = llava
    video = tmp_path / "clip.safetensors"
    save_file({"frames": torch.zeros(2, 8, 8, 3, dtype=torch.uint8)}, video)
    base = ["answer", "--weights", pllava, "--question", "Why?", "--device", "cpu", "--layer", 1]
    for args, want in ((["--video", tmp_path / "clip.safetensor"], "no such file or folder"),
                       (["--video", video, "--heatmap", tmp_path / "no" / "kept.png"], "does not exist"),
                       (["--video", video, "--heatmap", tmp_path], "is a folder")):
        code, stdout, err = main(*base, *args)
        assert code == 2 and err.count("\n") == 1 and want in err and "loading shard" not in err, err


def test_the_docs_say_the_byte_level_tokenizer_is_read():
    """README and docs/checkpoints.md said Qwen2's byte-level tokenizer was "waiting" for LLaVA-OneVision, refused by
    a cli.refuse_byte_level that the code does not have; minivtp.tokenizer reads it (tests/test_tokenizer.py)."""
    from minivtp import cli
    assert not hasattr(cli, "refuse_byte_level")
    for doc in ("README.md", "docs/checkpoints.md"):
        text = (ROOT / doc).read_text()
        assert "refuse_byte_level" not in text and "does not read yet" not in text
        assert "once minivtp reads Qwen2's byte-level tokenizer" not in text
