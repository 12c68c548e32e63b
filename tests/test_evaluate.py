"""python -m minivtp eval: MVBench's format and letter rule, resumable, one process or two (torchrun, gloo), bad
questions recorded instead of crashing, and the exported toy benchmark agreeing with python -m minivtp.lab.experiments."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import eval_cmd

from minivtp.evaluation import loop as evaluate
from minivtp.lab import toy
from minivtp.lab.experiments import measure
from minivtp.generate import Method

ROOT = Path(__file__).resolve().parents[1]
TIMES = ("seconds", "prefill_s", "decode_s")


def rows(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("toybench")
    toy.export_mvbench(d, n=40, seed=4242)
    return d


@pytest.mark.parametrize("device,eager,no_compile,want", [
    ("cuda", False, False, "tuned"), ("cuda:0", False, True, "plain"), ("cuda", True, False, "eager"),
    ("cpu", False, False, None), ("cpu", False, True, "plain")])
def test_eval_s_decode_step_on_each_path(device, eager, no_compile, want):
    """Which decode step eval asks for (cli.decode_step): on CUDA the tuned one (the blocks compiled once for the
    loop, the step autotuned); --no-compile the graph of model.py's plain step; --eager the readable path; on a
    CPU generate's own functions unless a step is named. Each flag means the same in answer."""
    from argparse import Namespace

    from minivtp.cli import decode_step
    assert decode_step(Namespace(device=device, eager=eager, no_compile=no_compile, decode=None), "tuned") == want


def test_decoder_for_each_step_on_a_cpu_model():
    """fast.decoder_for, the one place a command's step becomes a decoder: a loop of questions gets bucketed
    caches and prefill graphs, one question exact sizes and none; a CPU model is never fused or compiled."""
    from minivtp import fast
    from minivtp.model import Config, Transformer
    llm = Transformer(Config(vocab_size=11, dim=16, n_layers=2, n_heads=2, n_kv_heads=2, hidden_dim=32, max_seq_len=32))
    assert fast.decoder_for(llm, None) is None and fast.decoder_for(llm, "eager") is None
    loop, one = fast.decoder_for(llm, "plain", loop=True), fast.decoder_for(llm, "plain")
    assert (loop.step, loop.bucket, loop.prefill_bucket) == ("plain", 256, 16)
    assert (one.step, one.bucket, one.prefill_bucket) == ("plain", 1, 0)
    assert not any(isinstance(layer.attn, fast.FusedQKVAttention) for layer in llm.layers)
    with pytest.raises(ValueError, match="--decode triton runs CUDA kernels"):
        fast.decoder_for(llm, "triton")
    with pytest.raises(ValueError, match="--decode 'fused' must be one of eager, plain, tuned, triton"):
        fast.decoder_for(llm, "fused")


def test_letters_and_prompt_text():
    assert evaluate.letter_of("B) a man") == "B" and evaluate.letter_of("(c) no") == "C"
    assert evaluate.letter_of("  D") == "D" and evaluate.letter_of("I think so") is None
    q = dict(question="What?", candidates=["yes", "no"], answer="no")
    assert evaluate.qa_text(q) == "Question: What?\nOptions:\n(A) yes\n(B) no"


def test_toy_benchmark_agrees_with_the_experiments(bench, tmp_path):
    out = tmp_path / "r.jsonl"
    run = eval_cmd("--weights", toy.ASSETS, "--questions", bench / "questions.json", "--videos", bench / "videos",
                   "--out", out, "--alpha", 0.1, "--layer", toy.DEFAULT_LAYER, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    g = torch.Generator().manual_seed(4242)
    samples = [toy.make_sample(g) for _ in range(40)]  # export_mvbench draws the same videos, then its options
    model = toy.load()
    per_question = [toy.is_right(s, toy.ask(model, s, method=Method(alpha=0.1, layer=toy.DEFAULT_LAYER))[0])
                    for s in samples]
    assert [r["correct"] for r in rows(out)] == per_question
    acc, _ = measure(model, samples, Method(alpha=0.1, layer=toy.DEFAULT_LAYER))
    assert summary["accuracy"] == pytest.approx(acc) and summary["mean_kept_ratio"] == pytest.approx(8 / 72)


def test_more_processes_than_gpus_is_one_error_line(bench, tmp_path, monkeypatch, capsys):
    """torchrun --nproc-per-node 2 on a one-GPU machine: the second process says why, before any distributed setup."""
    import minivtp.__main__ as cli_main
    monkeypatch.setattr(cli_main, "check_device", lambda name: None)  # as if this machine had CUDA
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    code = cli_main.main(["eval", "--weights", str(toy.ASSETS), "--questions", str(bench / "questions.json"),
                          "--videos", str(bench / "videos"), "--out", str(tmp_path / "r.jsonl"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "process 1 on this machine would use cuda:1, but torch sees 1 GPU(s)" in err and "--device cpu" in err
    assert not (tmp_path / "r.jsonl").exists()


def test_two_processes_give_the_one_process_results(bench, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = ["--weights", toy.ASSETS, "--questions", bench / "questions.json", "--videos", bench / "videos",
            "--alpha", 0.2, "--layer", 1, "--json", "--device", "cpu"]  # gloo, on a GPU machine too
    a = eval_cmd(*args, "--out", one)
    b = eval_cmd(*args, "--out", two, torchrun=True)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-3000:]
    assert rows(one) == rows(two)
    sa, sb = json.loads(a.stdout), json.loads(b.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in sa.items() if k != "seconds_per_question"} == \
        {k: v for k, v in sb.items() if k != "seconds_per_question"}
    assert not list(tmp_path.glob("two.jsonl.rank*"))  # the shards were merged and removed


def test_a_rerun_skips_what_is_done(bench, tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["--weights", toy.ASSETS, "--questions", bench / "questions.json", "--videos", bench / "videos",
            "--out", out, "--layer", 1]
    full = eval_cmd(*args)
    assert full.returncode == 0
    first = out.read_text().splitlines()
    out.write_text("\n".join(first[:25]) + "\n" + first[25][:10])  # as if killed while writing question 26
    again = eval_cmd(*args, "--no-compile")  # accepted everywhere; on CUDA it skips compile_blocks
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("[rank 0]") == 15  # questions 26..40 only
    assert sorted(r["id"] for r in rows(out)) == sorted(r["id"] for r in (json.loads(x) for x in first))


def test_bad_questions_are_recorded_not_fatal(bench, tmp_path):
    qs = json.loads((bench / "questions.json").read_text())[:3]
    qs.append(dict(qs[0], id="missing-video", video="nowhere.safetensors"))
    qs.append(dict(qs[0], id="no-candidates", candidates=None))
    qs.append(dict(qs[0], id="answer-not-an-option", answer="purple cube"))
    qs.append("not an object")
    f = tmp_path / "q.json"
    f.write_text(json.dumps(qs))
    out = tmp_path / "r.jsonl"
    run = eval_cmd("--weights", toy.ASSETS, "--questions", f, "--videos", bench / "videos", "--out", out,
                   "--layer", 1, "--json")
    assert run.returncode == 0, run.stderr
    got = {r["id"]: r for r in rows(out)}
    assert "nowhere.safetensors" in got["missing-video"]["error"]
    assert "no candidates" in got["no-candidates"]["error"]
    assert "its answer is not one of its candidates" in got["answer-not-an-option"]["error"]
    assert "not an object" in got["6"]["error"]
    assert json.loads(run.stdout)["errors"] == 4
    wrong_layer = eval_cmd("--weights", toy.ASSETS, "--questions", f, "--videos", bench / "videos", "--out",
                           tmp_path / "w.jsonl", "--alpha", 0.1, "--layer", 10)
    assert wrong_layer.returncode == 2 and wrong_layer.stderr.strip().startswith("error: layer=10 is outside 1..4")
    assert not (tmp_path / "w.jsonl").exists()
    too_much = eval_cmd("--weights", toy.ASSETS, "--questions", f, "--videos", bench / "videos", "--out",
                        tmp_path / "a.jsonl", "--alpha", 1.5, "--layer", 1)  # not "keep everything": an error
    assert too_much.returncode == 2 and too_much.stderr.strip() == "error: alpha=1.5 is outside (0, 1]: it is the " \
        "fraction of video tokens kept"
    assert not (tmp_path / "a.jsonl").exists()
    broken = tmp_path / "broken.json"
    broken.write_text("{oops")
    bad = eval_cmd("--weights", toy.ASSETS, "--questions", broken, "--videos", bench, "--out", out)
    assert bad.returncode == 2 and bad.stderr.strip().startswith(f"error: {broken}: cannot read the questions")


def test_a_video_llm_checkpoint_through_the_harness(llava, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    qs = []
    for i in range(3):
        save_file({"frames": torch.randint(0, 256, (5, 30, 40, 3), dtype=torch.uint8)}, videos / f"v{i}.safetensors")
        qs.append(dict(video=f"v{i}.safetensors", question="What happens?", candidates=["a dog", "a cat", "a cow"],
                       answer="a cat", task_type="Action Sequence"))
    (tmp_path / "q.json").write_text(json.dumps({"Action Sequence": qs}))
    out = tmp_path / "r.jsonl"
    run = eval_cmd("--weights", llava[1], "--questions", tmp_path / "q.json", "--videos", videos, "--out", out,
                   "--alpha", 0.5, "--layer", 2, "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr
    got = rows(out)
    assert len(got) == 3 and all(r["prediction"].startswith("(") and r["answer"] == "B" for r in got)
    assert all(r["kept_ratio"] == 0.5 for r in got)  # 2 of 4 tokens in each pooled frame
    assert json.loads(run.stdout)["per_task"]["Action Sequence"]["total"] == 3


def test_eval_hands_look_m_its_merge(bench, tmp_path, monkeypatch):
    """--merge reaches the Method eval runs (it was accepted by answer only, and eval always merged by average)."""
    import minivtp.__main__ as cli_main
    from minivtp import cli
    seen, real = [], cli.method_of
    monkeypatch.setattr(cli, "method_of", lambda args: seen.append(real(args)) or seen[-1])
    code = cli_main.main(["eval", "--weights", str(toy.ASSETS), "--questions", str(bench / "questions.json"),
                          "--videos", str(bench / "videos"), "--out", str(tmp_path / "r.jsonl"), "--method", "look-m",
                          "--merge", "pivotal", "--device", "cpu"])
    assert code == 0 and seen and all(m.merge == "pivotal" for m in seen)  # the run's, and the settings it records
