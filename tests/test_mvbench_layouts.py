"""eval --benchmark mvbench on both downloaded layouts (minivtp/evaluation/mvbench_layouts.py): PLLaVA's (tests/benchtrees.py)
and lmms-eval's `video` revision (tests/lmms_eval_trees.py), told apart from what is on disk; a pre-cut segment is
read whole by PLLaVA's frame rule and never cut again; each row names its layout and the file it read."""

import contextlib
import io
import json
from pathlib import Path

import pytest

import benchtrees
import lmms_eval_trees
from minivtp.evaluation import benchmarks, mvbench_layouts
from minivtp.lab import toy
from minivtp.__main__ import main

pytest.importorskip("av", reason="the fake trees hold real video files: pip install av")


def eval_main(*args):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["eval", *map(str, args)])
    return code, err.getvalue()


def rows(path):
    return {r["id"]: r for r in map(json.loads, Path(path).read_text().splitlines())}


@pytest.fixture(scope="module")
def lmms_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvbench_video")
    return root, lmms_eval_trees.mvbench(root)


TASKS = "Action Sequence,Episodic Reasoning,Action Antonym,Object Shuffle,Fine-grained Pose"


def test_lmms_eval_s_segments_are_read_whole(lmms_tree, tmp_path):
    data, facts = lmms_tree
    code, err = eval_main("--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out",
                          tmp_path / "r.jsonl", "--tasks", TASKS)
    assert code == 0, err[-3000:]
    got = rows(tmp_path / "r.jsonl")
    want = {"Action Sequence/0": ("star/Charades_segment/SEG01_12.1_19.5.mp4", [12.1, 19.5]),
            "Action Sequence/1": ("star/Charades_segment/SEG02_1.2999999999999998_4.0.mp4", [1.3, 4.0]),
            "Episodic Reasoning/0": ("tvqa/video_fps3_hq_segment/clip_0001_2.0_6.0.mp4", [2.0, 6.0]),
            "Action Antonym/0": ("ssv2_video_mp4/1234.mp4", None),
            "Object Shuffle/0": ("perception/videos/v0.mp4", None)}
    for qid, (video, segment) in want.items():
        r = got[qid]
        task, i = qid.split("/")
        assert (r["layout"], r["video"], r.get("segment")) == ("lmms-eval", video, segment), r
        assert r["frames"] == facts[task][int(i)]  # PLLaVA's rule over the whole file: not cut again
        assert r["correct"] and r["prediction"] == json.loads((data / "json" / f"{task.lower().replace(' ', '_')}"
                                                               ".json").read_text())[int(i)]["answer"]
    pose = got["Fine-grained Pose/0"]
    assert pose["layout"] == "lmms-eval" and str(data / "nturgbd_convert/S001C001P001R001A001_rgb.mp4") in pose["error"]
    # the question's start and end are seconds of the original video: cut again, the short file has no such part
    with pytest.raises(ValueError, match="outside the video"):
        benchmarks.read_clip(dict(video=want["Action Sequence/0"][0], data_type="video", bound=[12.1, 19.5]), data,
                             toy.T)


def test_pllava_s_layout_rows_say_so(tmp_path):
    data = tmp_path / "mvbench"
    data.mkdir()
    facts = benchtrees.mvbench(data)
    code, err = eval_main("--benchmark", "mvbench", "--data", data, "--weights", toy.ASSETS, "--out",
                          tmp_path / "r.jsonl", "--tasks", "Action Sequence,Object Shuffle")
    assert code == 0, err[-3000:]
    got = rows(tmp_path / "r.jsonl")
    seg = got["Action Sequence/0"]
    assert (seg["layout"], seg["video"], seg["frames"]) == ("pllava", "video/star/Charades_v1_480/SEG01.mp4",
                                                            facts["Action Sequence"]["seg"])
    assert "segment" not in seg and got["Object Shuffle/0"]["layout"] == "pllava"


def test_the_layout_is_what_is_on_disk(tmp_path):
    seq = next(t for t in benchmarks.MVBENCH if t.name == "Action Sequence")
    assert mvbench_layouts.layout(seq, tmp_path) == "pllava"  # nothing there: the error rows name PLLaVA's paths
    (tmp_path / "clevrer/video_validation").mkdir(parents=True)
    assert mvbench_layouts.layout(seq, tmp_path) == "lmms-eval"  # another of lmms-eval's folders is there
    (tmp_path / "star/Charades_segment").mkdir(parents=True)
    assert mvbench_layouts.layout(seq, tmp_path) == "lmms-eval"
    (tmp_path / "video/star/Charades_v1_480").mkdir(parents=True)
    assert mvbench_layouts.layout(seq, tmp_path) == "pllava"  # both: the original videos


def test_lmms_eval_layout_question_without_its_bounds_is_an_error_row(tmp_path):
    (tmp_path / "star/Charades_segment").mkdir(parents=True)
    (tmp_path / "json").mkdir()
    (tmp_path / "json/action_sequence.json").write_text(json.dumps(
        [dict(video="X.mp4", question="q", candidates=["a", "b"], answer="a", start=1.0)]))
    q = benchmarks.load("mvbench", tmp_path, ["Action Sequence"])[0]
    assert q["_error"] == f"{tmp_path / 'json/action_sequence.json'} entry 0 has no start / end seconds"
