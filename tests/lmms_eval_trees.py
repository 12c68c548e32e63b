"""A fake MVBench in lmms-eval's layout (OpenGVLab/MVBench at revision "video", lmms_eval/tasks/mvbench/utils.py's
DATA_LIST folders directly under DIR): segments already cut, one file per question, <video>_<start>_<end>.mp4,
made from the toy's samples as tests/benchtrees.py makes PLLaVA's layout. Each pre-cut file holds only its
segment: the toy's answer is in it wherever the file is read whole; cut again at the question's start and end
(seconds of the original video, beyond the end of the short file) it could not be read."""

import json
from pathlib import Path

import torch

from benchtrees import CANDIDATES, clip, one_object, reference_indices, text, write_video
from minivtp.lab import toy


def segment_file(root: Path, folder: str, name: str, sample, n, fps):
    """A pre-cut segment: n frames at fps, the sample's frames where PLLaVA's rule reads the whole file."""
    write_video(root / folder / name, clip(n, [(sample, reference_indices(toy.T, fps, n - 1))],
                                           torch.Generator().manual_seed(n)), fps=fps)
    return reference_indices(toy.T, fps, n - 1)


def mvbench(root: Path, seed=5):
    """Action Sequence (two questions: the exact file name, and one whose name spells start as floating point
    wrote it), Episodic Reasoning (TVQA as pre-cut mp4 at 3 fps), Action Antonym (the .webm question read from
    ssv2_video_mp4's .mp4), Object Shuffle (the same folder in both layouts), Fine-grained Pose (its file
    missing). Returns what the tests check against."""
    g = torch.Generator().manual_seed(seed)
    facts, files = {}, {}
    s1, s2 = one_object(g, "triangle", "blue", 2), one_object(g, "circle", "red", 5)
    facts["Action Sequence"] = [segment_file(root, "star/Charades_segment", "SEG01_12.1_19.5.mp4", s1, 24, 10),
                                segment_file(root, "star/Charades_segment", "SEG02_1.2999999999999998_4.0.mp4",
                                             s2, 19, 10)]
    files["action_sequence"] = [
        dict(video="SEG01.mp4", question=text(s1)[0], candidates=CANDIDATES, answer=text(s1)[1], start=12.1, end=19.5),
        dict(video="SEG02.mp4", question=text(s2)[0], candidates=CANDIDATES, answer=text(s2)[1], start=1.3, end=4.0)]
    s3 = one_object(g, "star", "yellow", 3)
    facts["Episodic Reasoning"] = [segment_file(root, "tvqa/video_fps3_hq_segment", "clip_0001_2.0_6.0.mp4",
                                                s3, 13, 3)]
    files["episodic_reasoning"] = [dict(video="clip_0001", question=text(s3)[0], candidates=CANDIDATES,
                                        answer=text(s3)[1], start=2.0, end=6.0)]
    s4 = one_object(g, "square", "green", 1)
    facts["Action Antonym"] = [segment_file(root, "ssv2_video_mp4", "1234.mp4", s4, 21, 12)]
    files["action_antonym"] = [dict(video="1234.webm", question=text(s4)[0], candidates=CANDIDATES,
                                    answer=text(s4)[1])]
    s5 = one_object(g, "circle", "red", 6)
    facts["Object Shuffle"] = [segment_file(root, "perception/videos", "v0.mp4", s5, 33, 8)]
    files["object_shuffle"] = [dict(video="v0.mp4", question=text(s5)[0], candidates=CANDIDATES, answer=text(s5)[1])]
    files["fine_grained_pose"] = [dict(video="S001C001P001R001A001_rgb.avi", question=text(s5)[0],
                                       candidates=CANDIDATES, answer=text(s5)[1])]
    (root / "nturgbd_convert").mkdir(parents=True)
    (root / "json").mkdir(parents=True, exist_ok=True)
    for name, qs in files.items():
        (root / f"json/{name}.json").write_text(json.dumps(qs))
    return facts
