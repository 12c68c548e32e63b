"""python -m minivtp eval --benchmark NAME --data DIR on fake trees in each benchmark's released layout, made from the
toy (tests/benchtrees.py): PLLaVA's frame rule against a recomputation written from its code, MVBench's segments
changing the answer, the frame-folder task, missing files as error rows, each benchmark's scoring or the files its
own scorer reads, torchrun and resume, and the README's commands."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from minivtp.evaluation import benchmarks
from minivtp.lab import toy
import benchtrees
from conftest import eval_cmd
from benchtrees import reference_indices

pytest.importorskip("av", reason="the fake trees hold real video files: pip install av")
ROOT = Path(__file__).resolve().parents[1]
TIMES = ("seconds", "prefill_s", "decode_s")


def eval_main(*args):
    """python -m minivtp eval in this process (no interpreter to start): (exit code, stdout, stderr)."""
    import contextlib
    import io

    from minivtp.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", *map(str, args)])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def rows(path):
    lines = Path(path).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in lines]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    pytest.importorskip("pyarrow", reason="Video-MME's questions are parquet: pip install pyarrow")
    root = tmp_path_factory.mktemp("benchmarks")
    facts = {}
    for name in benchmarks.BENCHMARKS:
        (root / name).mkdir()
        facts[name] = getattr(benchtrees, name)(root / name)
    return root, facts


@pytest.mark.parametrize("n,fps,count,bound,first", [
    (16, 30.0, 300, None, 0), (8, 10, 40, (1.2, 2.0), 0), (16, 29.97, 451, (3.3, 9.7), 0), (8, 3, 30, (2.0, 6.0), 1),
    (16, 3, 117, None, 1), (8, 25.0, 10, None, 0), (16, 24.0, 1000, (0.0, 0.1), 0), (8, 3, 50, (2.5, 7.5), 1)])
def test_frame_rule_is_pllavas(n, fps, count, bound, first):
    """benchmarks.pllava_indices against EvalDataset.get_index written out with numpy (tests/benchtrees.py); the
    cases include half-way roundings (2.5 * 3 = 7.5 -> 8, 4.5 -> 4), a folder numbered from 1 and a video
    shorter than n frames."""
    max_frame = count if first else count - 1
    assert benchmarks.pllava_indices(n, fps, max_frame, bound, first) == \
        reference_indices(n, fps, max_frame, bound, first)


def test_the_module_docstrings_worked_examples():
    import doctest
    assert doctest.testmod(benchmarks).failed == 0 and doctest.testmod(benchmarks).attempted == 3


def test_a_segment_outside_the_video_is_an_error():
    with pytest.raises(ValueError, match=r"segment 50.0..60.0 s at 10 fps gives frames .* outside the video's 0..39"):
        benchmarks.pllava_indices(8, 10, 39, (50.0, 60.0))


def test_mvbench_segments_frames_and_missing_files(trees, tmp_path):
    root, facts = trees
    data, f = root / "mvbench", facts["mvbench"]
    out = tmp_path / "r.jsonl"
    run = eval_main("--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out", out, "--json",
                   "--tasks", "Action Sequence,Episodic Reasoning,Object Shuffle,Action Antonym")
    assert run.returncode == 0, run.stderr[-3000:]
    got = {r["id"]: r for r in rows(out)}
    seg, er = got["Action Sequence/0"], got["Episodic Reasoning/0"]
    # the frames read are the reference rule's, in the segment, at the video's own fps
    assert seg["video"] == "video/star/Charades_v1_480/SEG01.mp4" and seg["frames"] == f["Action Sequence"]["seg"]
    assert got["Action Sequence/1"]["frames"] == f["Action Sequence"]["plain_frames"]
    assert er["video"] == "video/tvqa/frames_fps3_hq/clip_0001" and er["frames"] == f["Episodic Reasoning"]["seg"]
    assert [got[f"Object Shuffle/{i}"]["frames"] for i in range(2)] == [f["Object Shuffle"]["frames"]] * 2
    # the answer is only in the segment: read there, the toy names the segment's object (B, "triangle blue")
    assert seg["prediction"] == er["prediction"] == "triangle blue" and seg["letter"] == seg["answer"] == "B"
    assert seg["correct"] and er["correct"] and all(got[f"Object Shuffle/{i}"]["correct"] for i in range(2))
    # ... and read over the whole video, as PLLaVA would without the bound, it names the other one
    model = toy.load()
    for task, kind in (("Action Sequence", "video"), ("Episodic Reasoning", "frame")):
        q = dict(video=got[f"{task}/0"]["video"], data_type=kind, bound=None)
        frames, indices = benchmarks.read_clip(q, data, toy.T)
        assert indices == f[task]["whole"]
        features = torch.stack([toy.frame_features(x) for x in frames])
        words, _ = toy.ask(model, toy.Sample(features, [], toy.question("shape"), []))
        assert " ".join(words) == "circle red"
    # a missing video, a missing frame folder: error rows with the path; the run went on
    assert str(data / "video/ssv2_video/nowhere.webm") in got["Action Antonym/0"]["error"]
    assert str(data / "video/tvqa/frames_fps3_hq/clip_missing") in got["Episodic Reasoning/1"]["error"]
    assert got["Episodic Reasoning/2"]["error"].startswith(str(data / "video/tvqa/frames_fps3_hq/clip_gap/00008.jpg"))
    s = json.loads(run.stdout)
    assert s["errors"] == 3 and s["not_answered"] == {"missing": 2, "unreadable": 1}
    assert {k: s["per_task"]["Action Sequence"][k] for k in ("correct", "total", "accuracy")} == \
        dict(correct=2, total=2, accuracy=1.0)
    # not answered is not wrong: 5 of the 5 answered, 5 of 8 counting the 3 not answered as wrong
    assert s["accuracy"] == 1.0 and s["accuracy_counting_errors"] == pytest.approx(5 / 8)
    # without --tasks, each of the 16 absent task files is one error row that names it
    full = eval_main("--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out", tmp_path / "all.jsonl",
                    "--json")
    assert full.returncode == 0, full.stderr[-3000:]
    errors = [r["error"] for r in rows(tmp_path / "all.jsonl") if "error" in r]
    assert len(errors) == 19 and any(str(data / "json/fine_grained_pose.json") in e for e in errors)
    bad = eval_main("--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out", tmp_path / "x.jsonl",
                   "--tasks", "Action Sequnce")
    assert bad.returncode == 2 and "--tasks 'Action Sequnce' is not a task of mvbench" in bad.stderr


def test_videomme_letters_and_durations(trees, tmp_path):
    root, facts = trees
    out = tmp_path / "r.jsonl"
    run = eval_main("--benchmark", "videomme", "--data", root / "videomme", "--weights", toy.ASSETS, "--out", out,
                   "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    got = rows(out)
    assert [r["answer"] for r in got] == [r["answer"] for r in facts["videomme"]]
    assert [r["video"] for r in got] == ["data/vid0.mp4", "data/vid1.mp4", "data/vid2.mp4"]
    assert [r["frames"] for r in got] == [reference_indices(toy.T, 10, n - 1) for n in (20, 31, 45)]
    s = json.loads(run.stdout)
    assert sorted(s["per_task"]) == ["long", "medium", "short"]
    assert s["correct"] == sum(r["letter"] == r["answer"] for r in got) == sum(r["correct"] for r in got)


def test_videomme_and_egoschema_answer_rules():
    """Each benchmark's rule, on strings a model writes (lmms-eval's extract_characters_regex and
    egoschema_process_results_generation)."""
    assert benchmarks.letter("videomme", " The best answer is: C. a dog", {}) == "C"
    assert benchmarks.letter("videomme", "I cannot tell from this video what happens here at all", {}) is None
    q = dict(options=["A. a cat", "B. a dog.", "C. x", "D. y", "E. z"])
    assert benchmarks.letter("egoschema", "B", q) == "B" and benchmarks.letter("egoschema", "A.", q) == "A"
    assert benchmarks.letter("egoschema", "a dog.", q) == "B" and benchmarks.letter("egoschema", "B. a dog.", q) == "B"
    assert benchmarks.letter("egoschema", "I think B", q) is None  # not an option, not a letter: -1 there
    assert benchmarks.letter("mvbench", "(D) three", {}) == "D"
    text, template = benchmarks.prompt_of("videomme", dict(question="Why?", options=["A. a", "B. b"]))
    assert template == "plain" and text == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with only the "
        "letter (A, B, C, or D) of the correct option.\nWhy?\nA. a\nB. b\nThe best answer is:")
    text, _ = benchmarks.prompt_of("egoschema", dict(question="Why?", options=["A. a", "B. b"]))
    assert text == "Why?\nA. a\nB. b\nAnswer with the option's letter from the given choices directly."


def test_egoschema_scores_the_public_subset_and_writes_the_rest(trees, tmp_path):
    root, (qs, answers) = trees[0], trees[1]["egoschema"]
    out = tmp_path / "r.jsonl"
    run = eval_main("--benchmark", "egoschema", "--data", root / "egoschema", "--weights", toy.ASSETS, "--out", out,
                   "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    got = {r["id"]: r for r in rows(out)}
    s = json.loads(run.stdout)
    assert s["questions"] == 3 and s["unscored"] == 1 and list(s["per_task"]) == ["subset"]
    assert s["per_task"]["subset"]["total"] == 2
    assert got[qs[2]["q_uid"]]["correct"] is None and got[qs[2]["q_uid"]]["answer"] is None
    submission = json.loads((tmp_path / "r.jsonl.submission.json").read_text())
    assert set(submission) == {q["q_uid"] for q in qs}
    assert all(v == ("ABCDE".index(got[k]["letter"]) if got[k]["letter"] else -1) for k, v in submission.items())
    assert all(got[k]["correct"] == (submission[k] == v) for k, v in answers.items())
    assert "validate.py --f" in " ".join(s["notes"])


def test_open_ended_writes_the_judges_files(trees, tmp_path):
    root = trees[0]
    out = tmp_path / "qa.jsonl"
    run = eval_main("--benchmark", "videoqa", "--data", root / "videoqa", "--weights", toy.ASSETS, "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "minivtp cannot call it, and prints no score of its own" in run.stdout
    assert run.stdout.startswith("7 questions, none scored here") and "accuracy" not in run.stdout
    assert "python -m tasks.eval.videoqabench.pllava_eval_videoqabench" in run.stdout
    got = {r["id"]: r for r in rows(out)}
    assert got["ActivityNet_0"]["video"] == "ActivityNet/all_test/v_clip7.mp4"
    assert got["MSVD_Zero_Shot_QA_0"]["video"] == "MSVD_Zero_Shot_QA/videos/clip7.avi"
    assert got["TGIF_QA_0"]["frames"] == reference_indices(toy.T, 25, 15)
    assert "no video named gone" in got["TGIF_QA_1"]["error"] and "correct" not in got["TGIF_QA_0"]
    assert any(str(root / "videoqa/MSRVTT_Zero_Shot_QA/test_q.json") in r.get("error", "") for r in got.values())
    judge = json.loads((tmp_path / "qa.jsonl.judge/inference_results.json").read_text())
    assert len(judge) == 3 and all(set(j) == {"pred", "gt", "task_type", "question", "video_path"} for j in judge)
    assert {j["task_type"] for j in judge} == {"MSVD_QA", "ActivityNet", "TGIF_QA"}
    assert all(j["gt"] == "star green" and j["question"] == "name a shape in the video ASSISTANT:" for j in judge)

    out = tmp_path / "vcg.jsonl"
    run = eval_main("--benchmark", "vcgbench", "--data", root / "vcgbench", "--weights", toy.ASSETS, "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    judge = {j["task_type"]: j for j in json.loads((tmp_path / "vcg.jsonl.judge/inference_results.json").read_text())}
    assert set(judge["consistency_qa"]) == {"pred", "pred1", "gt", "video", "task_type", "question", "question1"}
    assert judge["consistency_qa"]["question1"] == " ".join(toy.question("colour"))
    assert judge["consistency_qa"]["pred1"].split()[0] in toy.COLOURS  # the colour question's own answer
    assert set(judge["generic_qa"]) == {"pred", "gt", "video_path", "question", "task_type"}
    assert judge["generic_qa"]["video_path"] == "Videos/Benchmarking/v_abc.mp4"


def test_broken_question_files_are_one_line_each(tmp_path):
    (tmp_path / "MSVD_Zero_Shot_QA").mkdir()
    (tmp_path / "MSVD_Zero_Shot_QA/test_q.json").write_text(json.dumps([dict(video_name="a", question="q")]))
    (tmp_path / "MSVD_Zero_Shot_QA/test_a.json").write_text(json.dumps([]))  # one answer short
    got = {q["task_type"]: q for q in benchmarks.load("videoqa", tmp_path)}
    assert "an answer for each, in the same order" in got["MSVD_QA"]["_error"]
    assert str(tmp_path / "TGIF_QA/test_q.json") in got["TGIF_QA"]["_error"]
    (tmp_path / "questions.json").write_text(json.dumps(["not a question"]))
    assert benchmarks.load("egoschema", tmp_path)[0]["_error"].endswith("entry 0 is not an object")
    with pytest.raises(ValueError, match="--data .*nowhere: no such folder"):
        benchmarks.load("mvbench", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="--benchmark 'mvbenc' is not one of mvbench, videomme"):
        benchmarks.load("mvbenc", tmp_path)


def test_vcg_stop_words_and_pllava_prompts():
    assert benchmarks.open_answer("vcgbench", " A man runs.### USER: more") == "A man runs."
    assert benchmarks.open_answer("videoqa", " a dog ") == "a dog"
    assert benchmarks.prompt_of("videoqa", dict(question="who?")) == ("who?", "eval_videoqabench")


@pytest.mark.parametrize("benchmark", benchmarks.BENCHMARKS)
def test_torchrun_and_resume_on_every_benchmark(trees, tmp_path, benchmark, capsys):
    """Two processes (torchrun, gloo) give the one-process lines and files; a run killed mid-line resumes. The
    one-process runs are in this process (python -m minivtp's main), to keep the test quick."""
    from minivtp.__main__ import main
    root = trees[0]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = ["--benchmark", benchmark, "--data", root / benchmark, "--weights", toy.ASSETS, "--alpha", 0.2,
            "--layer", 1, "--json", "--device", "cpu"]
    assert main(["eval", *map(str, args), "--out", str(one)]) == 0
    b = eval_cmd(*args, "--out", two, torchrun=True)
    assert b.returncode == 0, b.stderr[-3000:]
    assert rows(one) == rows(two) and len(rows(one)) >= 3
    assert not list(tmp_path.glob("two.jsonl.rank*"))
    for suffix in (".submission.json", ".judge/inference_results.json"):  # what a scorer reads: the same too
        if Path(f"{one}{suffix}").exists():
            assert json.loads(Path(f"{one}{suffix}").read_text()) == \
                json.loads(Path(f"{two}{suffix}").read_text())
    lines = one.read_text().splitlines()
    one.write_text("\n".join(lines[:2]) + "\n" + lines[2][:7])  # killed while writing the third line
    capsys.readouterr()
    assert main(["eval", *map(str, args), "--out", str(one)]) == 0
    assert capsys.readouterr().err.count("[rank 0]") == len(lines) - 2
    assert sorted(r["id"] for r in rows(one)) == sorted(json.loads(x)["id"] for x in lines)


def readme_commands():
    """The README's `python -m minivtp eval --benchmark ...` lines (with their continuation lines)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()
            if line.startswith("python -m minivtp eval --benchmark")]


def test_the_readme_commands_run(trees, tmp_path):
    """Each README command as written, with the toy for the 7B checkpoint, its fake tree for the download, layer 1
    for the toy's 4 layers, and its --out in a temporary folder."""
    root = trees[0]
    commands = readme_commands()
    assert {re.search(r"--benchmark (\S+)", c)[1] for c in commands} == set(benchmarks.BENCHMARKS)
    for c in commands:
        words = c.split()[3:]  # after "python -m minivtp"
        for flag, value in (("--weights", toy.ASSETS), ("--out", tmp_path / Path(words[words.index("--out") + 1])),
                            ("--data", root / words[words.index("--benchmark") + 1]), ("--layer", 1)):
            if flag in words:
                words[words.index(flag) + 1] = str(value)
        run = eval_main(*words[1:])
        assert run.returncode == 0, (c, run.stderr[-2000:])
