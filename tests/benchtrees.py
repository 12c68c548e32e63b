"""Fake benchmark trees in each benchmark's released layout, their videos made from the toy's samples: tiny real
video files (PyAV, lossless H.264) and folders of JPEGs whose frames toy.frame_features reads back.

The frame indices that the builders place the toy's frames at come from `reference_indices`, written here from
PLLaVA's code (tasks/eval/eval_utils.py, EvalDataset.get_index) with numpy, as that code runs: not by calling
minivtp.evaluation.benchmarks."""

import json
from pathlib import Path

import numpy as np
import torch

from minivtp.lab import toy


def reference_indices(num_segments, fps, max_frame, bound=None, first_idx=0):
    # EvalDataset.get_index, line for line (numpy's round and Python's round, both half to even)
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


def one_object(g, shape, colour, frame, kind="shape"):
    """A toy video with one object, in `frame`; the question asks for its `kind` first."""
    f = toy.clutter(g)
    o = toy.Object(shape, colour, frame, int(torch.randint(toy.ROWS, (1,), generator=g)),
                   int(torch.randint(toy.COLS, (1,), generator=g)))
    toy.draw(f, o)
    answer = [shape, colour] if kind == "shape" else [colour, shape]
    return toy.Sample(f.reshape(toy.T, toy.NV, toy.P), [o], toy.question(kind), answer)


def clip(n_frames, placed, g):
    """n_frames pictures: clutter everywhere, then each (sample, positions) puts its frame t at positions[t]."""
    filler = toy.clutter(g).reshape(toy.T, toy.NV, toy.P)
    frames = [toy.frame_image(filler[i % toy.T]) for i in range(n_frames)]
    for sample, positions in placed:
        for t, p in enumerate(positions):
            frames[p] = toy.frame_image(sample.features[t])
    return frames


def write_video(path: Path, frames, fps=10):
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    gif = path.suffix == ".gif"
    with av.open(str(path), "w") as c:
        s = c.add_stream("gif" if gif else "libx264rgb", rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "rgb8" if gif else "rgb24"
        if not gif:
            s.options = {"qp": "0"}  # lossless: the toy's features come back exactly
        for f in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def write_frame_folder(path: Path, frames):
    from PIL import Image
    path.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, 1):  # numbered from 1, as TVQA's frames_fps3_hq
        Image.fromarray(f.numpy()).save(path / f"{i:05d}.jpg", quality=100)


def text(sample):
    return " ".join(sample.question), " ".join(sample.answer)


def segment_case(g, n_frames, fps, bound, first_idx=0, max_frame=None):
    """A video whose answer is only in its segment: sample B fills the frames the segment reads, sample A (another
    shape and colour) the frames a whole-video read takes, and neither object sits where the two reads overlap."""
    max_frame = n_frames - 1 if max_frame is None else max_frame
    seg = reference_indices(toy.T, fps, max_frame, bound, first_idx)
    whole = reference_indices(toy.T, fps, max_frame, None, first_idx)
    b_frame = next(t for t in range(toy.T) if seg[t] not in whole)
    a_frame = next(t for t in range(toy.T) if whole[t] not in seg)
    b = one_object(g, "triangle", "blue", b_frame)
    a = one_object(g, "circle", "red", a_frame)
    shift = first_idx  # a folder's file 00001.jpg is frame 1: list position 0
    frames = clip(n_frames, [(a, [p - shift for p in whole]), (b, [p - shift for p in seg])], g)
    return frames, a, b, seg, whole


CANDIDATES = ["circle red", "triangle blue", "square green", "star yellow"]


def mvbench(root: Path, seed=0):
    """MVBench: json/<task>.json and video/<prefix>/...: a segment task (Action Sequence, mp4), the frame-folder
    task (Episodic Reasoning), a whole-video task (Object Shuffle) and a task whose video is missing (Action
    Antonym); the other 16 task files are absent. Returns what the tests check against."""
    g = torch.Generator().manual_seed(seed)
    facts = {}
    # Action Sequence: 40 frames at 10 fps, segment 1.2 .. 2.0 s
    frames, a, b, seg, whole = segment_case(g, 40, 10, (1.2, 2.0))
    write_video(root / "video/star/Charades_v1_480/SEG01.mp4", frames, fps=10)
    q, _ = text(b)
    plain = one_object(g, "square", "green", 3)
    write_video(root / "video/star/Charades_v1_480/PLAIN1.mp4", clip(25, [(plain, reference_indices(
        toy.T, 10, 24))], g), fps=10)
    entries = [dict(video="SEG01.mp4", question=q, candidates=CANDIDATES, answer="triangle blue", start=1.2, end=2.0),
               dict(video="PLAIN1.mp4", question=text(plain)[0], candidates=CANDIDATES, answer="square green",
                    start=0.0, end=2.4)]
    facts["Action Sequence"] = dict(seg=seg, whole=whole, a=a, b=b, plain_frames=reference_indices(
        toy.T, 10, 24, (0.0, 2.4)))
    # Episodic Reasoning: 30 JPEGs at 3 fps, segment 2.0 .. 6.0 s (frames from 1)
    frames, a2, b2, seg2, whole2 = segment_case(g, 30, 3, (2.0, 6.0), first_idx=1, max_frame=30)
    write_frame_folder(root / "video/tvqa/frames_fps3_hq/clip_0001", frames)
    gap = root / "video/tvqa/frames_fps3_hq/clip_gap"
    write_frame_folder(gap, frames)
    (gap / "00008.jpg").rename(gap / "00031.jpg")  # frame 8, one the segment reads, is not there (still 30 files)
    er = [dict(video="clip_0001", question=text(b2)[0], candidates=CANDIDATES, answer="triangle blue",
               start=2.0, end=6.0),
          dict(video="clip_missing", question=text(b2)[0], candidates=CANDIDATES, answer="triangle blue",
               start=2.0, end=6.0),
          dict(video="clip_gap", question=text(b2)[0], candidates=CANDIDATES, answer="triangle blue",
               start=2.0, end=6.0)]
    facts["Episodic Reasoning"] = dict(seg=seg2, whole=whole2, a=a2, b=b2)
    # Object Shuffle: whole videos, 33 frames at 8 fps
    shuffle = []
    for i, (shape, colour) in enumerate((("circle", "red"), ("star", "yellow"))):
        s = one_object(g, shape, colour, (2 * i + 1) % toy.T)
        write_video(root / f"video/perception/videos/v{i}.mp4", clip(33, [(s, reference_indices(toy.T, 8, 32))], g),
                    fps=8)
        shuffle.append(dict(video=f"v{i}.mp4", question=text(s)[0], candidates=CANDIDATES, answer=text(s)[1]))
    facts["Object Shuffle"] = dict(frames=reference_indices(toy.T, 8, 32))
    antonym = [dict(video="nowhere.webm", question=q, candidates=CANDIDATES, answer="circle red")]
    (root / "json").mkdir(parents=True, exist_ok=True)
    for name, qs in (("action_sequence", entries), ("episodic_reasoning", er), ("object_shuffle", shuffle),
                     ("action_antonym", antonym)):
        (root / f"json/{name}.json").write_text(json.dumps(qs))
    return facts


def videomme(root: Path, seed=1):
    """Video-MME: videomme/test-00000-of-00001.parquet (its columns) and data/<videoID>.mp4, one video per
    duration; returns the right letters."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, (duration, (shape, colour)) in enumerate(zip(("short", "medium", "long"),
                                                        (("circle", "red"), ("triangle", "blue"), ("star", "yellow")))):
        s = one_object(g, shape, colour, i + 2)
        n = (20, 31, 45)[i]
        write_video(root / f"data/vid{i}.mp4", clip(n, [(s, reference_indices(toy.T, 10, n - 1))], g))
        options = [f"{'ABCD'[k]}. {c}" for k, c in enumerate(CANDIDATES)]
        rows.append(dict(video_id=f"{i:03d}", duration=duration, domain="Knowledge", sub_category="Astronomy",
                         url="", videoID=f"vid{i}", question_id=f"{i:03d}-1", task_type="Object Recognition",
                         question=text(s)[0], options=options, answer="ABCD"[CANDIDATES.index(text(s)[1])]))
    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme/test-00000-of-00001.parquet")
    return rows


def egoschema(root: Path, seed=2):
    """EgoSchema: questions.json ("q_uid", "question", "option 0".."option 4"), subset_answers.json for two of the
    three, videos/<q_uid>.mp4."""
    g = torch.Generator().manual_seed(seed)
    qs, answers = [], {}
    options = CANDIDATES + ["square red"]
    for i, (shape, colour) in enumerate((("circle", "red"), ("star", "yellow"), ("square", "green"))):
        s = one_object(g, shape, colour, i + 1)
        uid = f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd"
        write_video(root / f"videos/{uid}.mp4", clip(30, [(s, reference_indices(toy.T, 10, 29))], g))
        qs.append({"q_uid": uid, "google_drive_id": "x", "question": text(s)[0],
                   **{f"option {k}": o for k, o in enumerate(options)}})
        if i < 2:
            answers[uid] = options.index(text(s)[1])
    (root / "questions.json").write_text(json.dumps(qs))
    (root / "subset_answers.json").write_text(json.dumps(answers))
    return qs, answers


def videoqa(root: Path, seed=3):
    """PLLaVA's DATAS/VideoQA: MSVD_Zero_Shot_QA (.avi), ActivityNet (names get "v_"), TGIF_QA (.gif); test_q.json
    and test_a.json pair up by position. MSRVTT_QA's files are absent."""
    g = torch.Generator().manual_seed(seed)
    for task, folder, ext, prefix in (("MSVD_Zero_Shot_QA", "MSVD_Zero_Shot_QA/videos", "avi", ""),
                                      ("ActivityNet", "ActivityNet/all_test", "mp4", "v_"),
                                      ("TGIF_QA", "TGIF_QA/tgif_videos", "gif", "")):
        s = one_object(g, "star", "green", 4)
        write_video(root / f"{folder}/{prefix}clip7.{ext}", clip(16, [(s, reference_indices(toy.T, 10, 15))], g))
        (root / f"{task}/test_q.json").write_text(json.dumps(
            [dict(video_name="clip7", question=text(s)[0], question_id=f"{task}_0"),
             dict(video_name="gone", question=text(s)[0], question_id=f"{task}_1")]))
        (root / f"{task}/test_a.json").write_text(json.dumps(
            [dict(answer=text(s)[1], type=5, question_id=f"{task}_0"),
             dict(answer=text(s)[1], type=5, question_id=f"{task}_1")]))


def vcgbench(root: Path, seed=4):
    """PLLaVA's DATAS/VCGBench: Zero_Shot_QA/Benchmarking_QA/{generic,temporal,consistency}_qa.json and
    Videos/Benchmarking/<video_name>.mp4."""
    g = torch.Generator().manual_seed(seed)
    s = one_object(g, "square", "blue", 5)
    write_video(root / "Videos/Benchmarking/v_abc.mp4", clip(12, [(s, reference_indices(toy.T, 10, 11))], g))
    q, a = text(s)
    folder = root / "Zero_Shot_QA/Benchmarking_QA"
    folder.mkdir(parents=True)
    (folder / "generic_qa.json").write_text(json.dumps([dict(Q=q, A=a, video_name="v_abc")]))
    (folder / "temporal_qa.json").write_text(json.dumps([dict(Q=q, A=a, video_name="v_abc")]))
    (folder / "consistency_qa.json").write_text(json.dumps(
        [dict(Q1=q, Q2=" ".join(toy.question("colour")), A=a, video_name="v_abc")]))
