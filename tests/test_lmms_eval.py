"""lmms-eval --model minivtp (minivtp/evaluation/lmms.py), run by lmms-eval itself, offline, on local tasks (--include_path, a
`dataset_path: json` data file written here): a tiny PLLaVA checkpoint and the toy. Unpruned and alpha = 1 give
the same responses, and the same as `python -m minivtp answer`; the kept ratio lmms-eval logs is the one
`python -m minivtp eval` reports for the same video; bad settings are one line.

One lmms-eval process runs every configuration (its --config takes a list): starting lmms-eval costs some 30 s
here, most of it its imports and the index of its thousand-odd tasks."""

import json
import math
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import eval_cmd

from minivtp.lab import toy

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed: pip install -e \".[lmms-eval]\" && "
                                        "pip install --no-deps lmms-eval==0.7.3")
if "minivtp" not in {e.name for e in entry_points(group="lmms_eval.models")}:
    pytest.skip("the installed minivtp has no lmms_eval.models entry point: pip install -e . again",
                allow_module_level=True)

from minivtp.evaluation import lmms  # noqa: E402  (needs lmms_eval)

ROOT = Path(__file__).resolve().parents[1]
NEW = 4  # the local tasks' max_new_tokens
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_visual: !function minivtp_test_utils.doc_to_visual
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {new}
  temperature: 0
  do_sample: false
process_results: !function minivtp_test_utils.process_results
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
"""
UTILS = '''def doc_to_visual(doc):
    return [doc["video"]]


def process_results(doc, results):
    return {"exact": float(results[0].strip() == doc["answer"])}
'''


def lmms_eval_cmd(*args, cwd, env=None):
    code = "import sys; from lmms_eval.cli.dispatch import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=900)


def samples(out_dir: Path, task: str) -> list:
    files = sorted(Path(out_dir).rglob(f"*samples_{task}.jsonl"))
    assert len(files) == 1, f"{out_dir}: {files}"
    return sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])


def facts(sample: dict) -> dict:
    return sample["token_counts"][0]["minivtp"]


def run_lmms_eval(llava, tmp_path_factory):
    """Five configurations in one lmms-eval process; the last is a bad setting, which ends it with one line."""
    root = tmp_path_factory.mktemp("lmms_eval")
    videos = root / "videos"
    videos.mkdir()
    g = torch.Generator().manual_seed(39)
    qs = []
    for i in range(3):
        path = videos / f"v{i}.safetensors"
        save_file({"frames": torch.randint(0, 256, (5 + i, 30, 40, 3), dtype=torch.uint8, generator=g)}, path)
        qs.append(dict(video=str(path), question="What happens in the video?", candidates=["a dog", "a cat"],
                       answer="a cat", task_type="Action Sequence"))
    (root / "video.json").write_text(json.dumps(qs))
    bench = root / "toybench"
    toy.export_mvbench(bench, n=6, seed=3939)
    toy_qs = json.loads((bench / "questions.json").read_text())
    for q in toy_qs:
        q["video"] = str(bench / "videos" / q["video"])
    (root / "toy.json").write_text(json.dumps(toy_qs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "minivtp_test_utils.py").write_text(UTILS)
    for name, data in (("minivtp_test_video", root / "video.json"), ("minivtp_test_toy", root / "toy.json")):
        (tasks / f"{name}.yaml").write_text(TASK.format(name=name, data=data, new=NEW))
    common = dict(include_path=str(tasks), log_samples=True, batch_size=1)
    pllava = f"weights={llava[1]},device=cpu"
    configs = {"unpruned": (pllava, "minivtp_test_video"),
               "alpha1": (pllava + ",alpha=1,layer=2", "minivtp_test_video"),
               "pruned": (pllava + ",alpha=0.5,layer=2", "minivtp_test_video"),
               "toy": (f"weights={toy.ASSETS},alpha=0.3,layer=2", "minivtp_test_toy"),
               "bad": (f"weights={toy.ASSETS},alpha=0.3,layer=2,head_pool=avg", "minivtp_test_toy")}
    listed = [dict(common, model="minivtp", model_args=a, tasks=t, output_path=str(root / "out" / k))
              for k, (a, t) in configs.items()]
    import yaml
    (root / "runs.yaml").write_text(yaml.safe_dump(listed))
    env = dict(__import__("os").environ, HF_HOME=str(root / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    run = lmms_eval_cmd("--config", root / "runs.yaml", cwd=root, env=env)
    return root, run, {k: root / "out" / k for k in configs}, qs, toy_qs


def test_lmms_eval_runs_minivtp_offline(llava, tmp_path_factory, tmp_path):
    """One test for the one lmms-eval process, so that pytest -n starts it once."""
    runs = run_lmms_eval(llava, tmp_path_factory)
    check_a_bad_setting_ends_lmms_eval_with_one_line(runs)
    check_unpruned_and_alpha_1_give_the_same_responses_as_answer(runs, llava)
    check_the_logged_kept_ratio_is_eval_s(runs, llava, tmp_path)
    check_each_answer_logs_its_settings(runs, llava)


def test_the_entry_point_names_the_model():
    from lmms_eval.models import get_model
    assert get_model("minivtp") is lmms.MiniVTP
    assert lmms.manifest().simple_class_path == "minivtp.evaluation.lmms.MiniVTP"


def check_unpruned_and_alpha_1_give_the_same_responses_as_answer(runs, llava):
    root, run, out, qs, _ = runs
    unpruned, alpha1 = samples(out["unpruned"], "minivtp_test_video"), samples(out["alpha1"], "minivtp_test_video")
    assert [s["filtered_resps"] for s in unpruned] == [s["filtered_resps"] for s in alpha1], run.stderr[-3000:]
    assert all(facts(s)["kept_ratio"] == 1.0 and facts(s)["method"] is None for s in unpruned + alpha1)
    for s, q in zip(unpruned, qs):  # the same question through minivtp's own command, which shares no code with lmms.py
        a = subprocess.run([sys.executable, "-m", "minivtp", "answer", "--weights", llava[1], "--video", q["video"],
                            "--question", q["question"], "--alpha", "1", "--device", "cpu", "--max-new-tokens",
                            str(NEW), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert a.returncode == 0, a.stderr
        assert s["filtered_resps"].strip() == json.loads(a.stdout)["answer"]


def check_the_logged_kept_ratio_is_eval_s(runs, llava, tmp_path):
    root, run, out, qs, toy_qs = runs
    pruned = samples(out["pruned"], "minivtp_test_video")
    e = eval_cmd("--weights", llava[1], "--questions", root / "video.json", "--videos", "/", "--out",
                 tmp_path / "v.jsonl", "--alpha", 0.5, "--layer", 2, "--device", "cpu")
    assert e.returncode == 0, e.stderr
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [facts(s)["kept_ratio"] for s in pruned] == [r["kept_ratio"] for r in rows] == [0.5] * 3  # 2 of 4 a frame
    toy_samples = samples(out["toy"], "minivtp_test_toy")
    e = eval_cmd("--weights", toy.ASSETS, "--questions", root / "toy.json", "--videos", "/", "--out",
                 tmp_path / "t.jsonl", "--alpha", 0.3, "--layer", 2)
    assert e.returncode == 0, e.stderr
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    want = math.ceil(0.3 * toy.NV) / toy.NV  # ceil(alpha * Nv) of each frame's 9
    assert [facts(s)["kept_ratio"] for s in toy_samples] == [r["kept_ratio"] for r in rows] == [want] * len(rows)
    assert [s["filtered_resps"] for s in toy_samples] == [r["prediction"] for r in rows]


def check_each_answer_logs_its_settings(runs, llava):
    root, run, out, qs, toy_qs = runs
    for s, q in zip(samples(out["pruned"], "minivtp_test_video"), qs):
        f = facts(s)
        assert (f["method"], f["alpha"], f["layer"], f["variant"], f["head_pool"]) == \
            ("llm-vtp", 0.5, 2, "paper", "max")
        assert (f["video"], f["max_new_tokens"], f["weights"], f["dtype"]) == \
            (q["video"], NEW, str(llava[1]), "float32")
    assert [facts(s)["video"] for s in samples(out["toy"], "minivtp_test_toy")] == [q["video"] for q in toy_qs]


def check_a_bad_setting_ends_lmms_eval_with_one_line(runs):
    root, run, out, _, _ = runs
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["error: minivtp: model arg head_pool: invalid choice: 'avg' (choose from 'max', 'mean', 'min')"]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("args,message", [
    (dict(alpha=0.1), "give weights=DIR"),
    (dict(weights="W", alhpa=0.1), "unknown model arg(s) alhpa; minivtp takes weights, method, alpha"),
    (dict(weights="W", alpha="x"), "model arg alpha: invalid float value: 'x'"),
    (dict(weights="W", method="dycoke"), "model arg method: invalid choice: 'dycoke'"),
    (dict(weights="W", variant="fast"), "model arg variant: invalid choice: 'fast'"),
    (dict(weights="W", dtype="int8"), "model arg dtype: invalid choice: 'int8'"),
    (dict(weights="W", layer=2.5), "model arg layer: invalid int value: '2.5'"),
    (dict(weights="W", frames=0), "frames=0: give a whole number of frames, 1 or more"),
    (dict(weights="W", eager="yes"), "eager=yes: give true or false"),
    (dict(weights="W", batch_size=4), "batch_size 4: minivtp answers one question at a time"),
    (dict(weights="W", max_new_tokens=0), "max_new_tokens=0: give 1 or more"),
])
def test_bad_model_args_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        lmms.parse_model_args(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: minivtp: ") and message in err, err


@pytest.mark.parametrize("args,message", [
    (dict(alpha=1.5), "alpha=1.5 is outside (0, 1]"),
    (dict(alpha=0.3, layer=9), "layer"),
    (dict(frames=4), "frames=4: the toy's videos have 8 frames"),
])
def test_settings_checked_against_the_model_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit):
        lmms.MiniVTP(weights=str(toy.ASSETS), **args)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_missing_weights_and_device_are_one_line(tmp_path, capsys):
    for args, message in ((dict(weights=str(tmp_path / "none")), "no such directory"),
                          (dict(weights=str(toy.ASSETS), device="tpu"), "tpu")):
        with pytest.raises(SystemExit):
            lmms.MiniVTP(**args)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_sampling_and_other_request_types_are_refused_by_name(capsys):
    m = lmms.MiniVTP(weights=str(toy.ASSETS))
    assert m.max_new_tokens({"max_new_tokens": 7, "temperature": 0, "do_sample": False}) == 7
    with pytest.raises(SystemExit):
        m.max_new_tokens({"temperature": 0.7})
    assert "temperature=0.7; minivtp decodes greedily" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        m.max_new_tokens({"max_new_tokens": 0})
    assert "the task asks for max_new_tokens=0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the toy knows only its own words"):
        m.answer("unused.safetensors", "Question: what?", 4)
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        m.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until_multi_round"):
        m.generate_until_multi_round([])


def test_frames_sets_the_frames_read(llava, tmp_path, monkeypatch):
    from minivtp.evaluation import pipeline
    m = lmms.MiniVTP(weights=str(llava[1]), device="cpu", frames=3)
    assert m.answerer.pipe.vm.frames == 3 and m.settings["frames"] == 3
    save_file({"frames": torch.randint(0, 256, (7, 30, 40, 3), dtype=torch.uint8)}, tmp_path / "v.safetensors")
    read = []
    real = pipeline.read_frames  # what the pipeline reads frames with
    monkeypatch.setattr(pipeline, "read_frames", lambda *a: read.append(a[1]) or real(*a))
    text, f = m.answer(str(tmp_path / "v.safetensors"), "What happens?", 2)
    assert read == [3] and f["kept_ratio"] == 1.0 and isinstance(text, str)


def test_the_readme_commands_parse():
    """The README's `lmms-eval --model minivtp` commands: their model args pass eval's parser, and each task they
    name is one of the installed lmms-eval's (a task's or a group's yaml)."""
    import re

    import lmms_eval
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()
                if line.startswith("lmms-eval --model minivtp")]
    assert len(commands) == 2
    tasks = Path(lmms_eval.__file__).parent / "tasks"
    for c in commands:
        words = c.split()
        args = lmms.parse_model_args(dict(a.split("=", 1) for a in words[words.index("--model_args") + 1].split(",")))
        assert args.weights == "pllava-7b" and args.lora_alpha == 4
        for name in words[words.index("--tasks") + 1].split(","):
            assert any(re.search(rf"^(task|group): {name}$", f.read_text(), re.M) for f in tasks.glob(f"{name}/*.yaml"))
    assert args.alpha == 0.1 and args.layer == 10 and args.method == "llm-vtp"
