"""python -m minivtp eval --batch-size B: the lines, summaries, files for the scorers, resume and torchrun of B = 1.

The oracle is the same command with --batch-size 1 (one question at a time through generate.generate); the times in
each line are left out of the comparison. Questions differ in length, and bad entries and missing videos sit among
the good ones, so a batch holds questions that error before their prompt beside those that answer."""

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import eval_cmd
from safetensors.torch import save_file

from minivtp.lab import toy

TIMES = ("seconds", "prefill_s", "decode_s")


def rows(path):
    lines = Path(path).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in lines]


def untimed(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("seconds_per_question", "notes")}  # notes name --out


def eval_main(*args):
    """python -m minivtp eval in this process: (exit code, stdout, stderr)."""
    from minivtp.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", *map(str, args)])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The toy's benchmark, 12 questions of three lengths (the template's "in the video" 0, 1 or 2 times), and four
    entries that cannot be asked among them."""
    d = tmp_path_factory.mktemp("toybatch")
    qs = toy.export_mvbench(d, n=12, seed=77)
    for i, q in enumerate(qs):
        words = q["question"].split()
        q["question"] = " ".join(words[:3] + ["in", "the", "video"] * (i % 3) + ["ASSISTANT:"])
    qs.insert(3, dict(qs[0], id="missing-video", video="nowhere.safetensors"))
    qs.insert(8, dict(qs[1], id="no-candidates", candidates=None))
    qs.insert(9, dict(qs[2], id="bad-answer", answer="purple cube"))
    qs.append("not an object")
    (d / "mixed.json").write_text(json.dumps(qs))
    return d


@pytest.mark.parametrize("method", [["--alpha", 0.1, "--layer", 1], [], ["--method", "look-m"]],
                         ids=["llm-vtp", "unpruned", "look-m"])  # the others: tests/test_batch.py, generate_many
def test_the_toy_s_lines_and_summary_at_batch_size_4_are_those_of_1(bench, tmp_path, method):
    args = ["--weights", toy.ASSETS, "--questions", bench / "mixed.json", "--videos", bench / "videos", "--json",
            "--device", "cpu", *method]
    one, four = tmp_path / "one.jsonl", tmp_path / "four.jsonl"
    a = eval_main(*args, "--out", one)
    b = eval_main(*args, "--out", four, "--batch-size", 4)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-3000:]
    got, want = rows(four), rows(one)
    assert got == want and len(got) == 16  # question order, errors included
    assert sum("error" in r for r in got) == 4 and "bad-answer" in {r["id"] for r in got if "error" in r}
    assert untimed(json.loads(b.stdout)) == untimed(json.loads(a.stdout))
    assert all(r["seconds"] > 0 for r in map(json.loads, four.read_text().splitlines()) if "error" not in r)


def test_a_batched_rerun_skips_what_is_done(bench, tmp_path):
    out, full_out = tmp_path / "r.jsonl", tmp_path / "full.jsonl"
    args = ["--weights", toy.ASSETS, "--questions", bench / "mixed.json", "--videos", bench / "videos", "--alpha",
            0.2, "--layer", 1, "--device", "cpu"]
    assert eval_main(*args, "--out", full_out).returncode == 0
    lines = full_out.read_text().splitlines()
    out.write_text("\n".join(lines[:11]) + "\n" + lines[11][:9])  # killed while writing question 12
    again = eval_main(*args, "--out", out, "--batch-size", 4)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("[rank 0]") == len(lines) - 11
    assert sorted(map(json.dumps, rows(out))) == sorted(map(json.dumps, rows(full_out)))


def test_torchrun_with_batches_gives_the_one_process_results(bench, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = ["--weights", toy.ASSETS, "--questions", bench / "mixed.json", "--videos", bench / "videos", "--alpha",
            0.2, "--layer", 1, "--json", "--device", "cpu"]  # gloo
    a = eval_main(*args, "--out", one)
    b = eval_cmd(*args, "--out", two, "--batch-size", 3, torchrun=True)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-3000:]
    assert rows(one) == rows(two)
    assert untimed(json.loads(a.stdout)) == untimed(json.loads(b.stdout.strip().splitlines()[-1]))
    assert not list(tmp_path.glob("two.jsonl.rank*"))


def test_a_bad_batch_size_is_one_line(bench, tmp_path):
    run = eval_main("--weights", toy.ASSETS, "--questions", bench / "mixed.json", "--videos", bench / "videos",
                    "--out", tmp_path / "r.jsonl", "--batch-size", 0)
    assert run.returncode == 2
    assert run.stderr == "error: --batch-size 0 must be >= 1 (the questions answered at a time)\n"
    assert not (tmp_path / "r.jsonl").exists()


def test_a_video_llm_checkpoint_in_batches(llava, tmp_path):
    """The tiny PLLaVA checkpoint (transformers wrote it): questions of different lengths (so prompts and kept rows
    differ), videos of different frame counts (PLLaVA samples its 4 from each), batches of 2 and 3 against one at a
    time. Stopping at an eos per question: tests/test_batch.py."""
    videos = tmp_path / "videos"
    videos.mkdir()
    g = torch.Generator().manual_seed(3)
    qs = []
    for i, question in enumerate(["What happens?", "Which animal walks in from the left of the picture, and why?",
                                  "Who?", "What colour is the small box on the table near the window?", "Why?"]):
        save_file({"frames": torch.randint(0, 256, (5 + i, 30, 40, 3), dtype=torch.uint8, generator=g)},
                  videos / f"v{i}.safetensors")
        qs.append(dict(video=f"v{i}.safetensors", question=question, answer="a cat", task_type="Action Sequence",
                       candidates=["a dog", "a cat", "a cow"][: 2 + i % 2]))
    (tmp_path / "q.json").write_text(json.dumps({"Action Sequence": qs}))
    args = ["--weights", llava[1], "--questions", tmp_path / "q.json", "--videos", videos, "--alpha", 0.5, "--layer",
            2, "--device", "cpu", "--json", "--max-new-tokens", 12]
    one = tmp_path / "one.jsonl"
    a = eval_main(*args, "--out", one)
    assert a.returncode == 0, a.stderr
    for b in (2, 3):
        out = tmp_path / f"b{b}.jsonl"
        run = eval_main(*args, "--out", out, "--batch-size", b)
        assert run.returncode == 0, run.stderr
        assert rows(out) == rows(one) and len(rows(one)) == 5
        assert untimed(json.loads(run.stdout)) == untimed(json.loads(a.stdout))
    assert len({r["prediction"] for r in rows(one)}) > 1  # the questions got different answers


def test_every_benchmark_in_batches(tmp_path_factory):
    """Each downloaded benchmark's layout (tests/benchtrees.py's fake trees, real video files), --tasks, and the
    files for the scorers, at --batch-size 3 against 1. VideoChatGPT's consistency questions ask two prompts a row."""
    pytest.importorskip("av", reason="the fake trees hold real video files: pip install av")
    pytest.importorskip("pyarrow", reason="Video-MME's questions are parquet: pip install pyarrow")
    import benchtrees

    from minivtp.evaluation import benchmarks
    root = tmp_path_factory.mktemp("benchmarks_batch")
    for name in benchmarks.BENCHMARKS:
        (root / name).mkdir()
        getattr(benchtrees, name)(root / name)
    for name in benchmarks.BENCHMARKS:
        tasks = ["--tasks", "Action Sequence,Episodic Reasoning,Object Shuffle"] if name == "mvbench" else []
        args = ["--benchmark", name, "--data", root / name, "--weights", toy.ASSETS, "--alpha", 0.2, "--layer", 1,
                "--json", "--device", "cpu", *tasks]
        one, three = root / f"{name}.one.jsonl", root / f"{name}.three.jsonl"
        a, b = eval_main(*args, "--out", one), eval_main(*args, "--out", three, "--batch-size", 3)
        assert a.returncode == 0 and b.returncode == 0, b.stderr[-3000:]
        assert rows(three) == rows(one) and len(rows(one)) >= 3, name
        assert untimed(json.loads(a.stdout)) == untimed(json.loads(b.stdout))
        for suffix in (".submission.json", ".judge/inference_results.json"):
            if Path(f"{one}{suffix}").exists():
                a, b = (json.loads(Path(f"{f}{suffix}").read_text()) for f in (one, three))
                assert a == b, (name, suffix)
