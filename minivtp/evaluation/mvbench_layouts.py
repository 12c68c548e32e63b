"""MVBench's two downloaded layouts, told apart by what is on disk (benchmarks.load_mvbench asks here per task).

    pllava      DIR/json/<task>.json, DIR/video/<source>/...: the original videos (star/Charades_v1_480,
                tvqa/frames_fps3_hq as folders of JPEGs, ssv2_video, nturgbd, sta/sta_video); a question with
                "start" / "end" is cut at read time (PLLaVA's frame rule inside the segment).
    lmms-eval   DIR/json/<task>.json, DIR/<source>/...: OpenGVLab/MVBench at revision "video", as lmms-eval downloads
                it (its cache folder mvbench_video; lmms_eval/tasks/mvbench/utils.py DATA_LIST names the folders).
                Three sources come pre-cut, one file per question's segment, <video>_<start>_<end>.mp4:
                star/Charades_segment, sta/sta_video_segment, tvqa/video_fps3_hq_segment (TVQA's frames as mp4);
                two are re-encoded to mp4: ssv2_video_mp4, nturgbd_convert. A pre-cut file is read whole (PLLaVA's
                rule over the file), never cut again.

The segment's file name carries the question's start and end as Python writes the numbers (1.2999999999999998 for
a start computed in floating point); when that exact name is not there, a file of the same video whose two numbers
equal start and end to 1e-6 is taken.
"""

from pathlib import Path

# PLLaVA's task name -> lmms-eval's folder (lmms_eval/tasks/mvbench/utils.py, DATA_LIST, by its sub_task)
LMMS_EVAL = {
    "Action Sequence": "star/Charades_segment", "Action Prediction": "star/Charades_segment",
    "Action Antonym": "ssv2_video_mp4", "Fine-grained Action": "Moments_in_Time_Raw/videos",
    "Unexpected Action": "FunQA_test/test", "Object Existence": "clevrer/video_validation",
    "Object Interaction": "star/Charades_segment", "Object Shuffle": "perception/videos",
    "Moving Direction": "clevrer/video_validation", "Action Localization": "sta/sta_video_segment",
    "Scene Transition": "scene_qa/video", "Action Count": "perception/videos",
    "Moving Count": "clevrer/video_validation", "Moving Attribute": "clevrer/video_validation",
    "State Change": "perception/videos", "Fine-grained Pose": "nturgbd_convert",
    "Character Order": "perception/videos", "Egocentric Navigation": "vlnqa",
    "Episodic Reasoning": "tvqa/video_fps3_hq_segment", "Counterfactual Inference": "clevrer/video_validation",
}
PRE_CUT = ("star/Charades_segment", "sta/sta_video_segment", "tvqa/video_fps3_hq_segment")
TO_MP4 = ("ssv2_video_mp4", "nturgbd_convert") + PRE_CUT


def layout(task, data: Path) -> str:
    """"pllava" or "lmms-eval" for one task of DIR `data`: whose folder for it is there (PLLaVA's when both are,
    or neither and DIR/video is; lmms-eval's when neither is but DIR holds one of its folders)."""
    if (data / task.prefix).is_dir():
        return "pllava"
    if (data / LMMS_EVAL[task.name]).is_dir():
        return "lmms-eval"
    if (data / "video").is_dir() or not any((data / f).is_dir() for f in set(LMMS_EVAL.values())):
        return "pllava"
    return "lmms-eval"


def lmms_eval_video(task, entry: dict, data: Path):
    """(the file under DIR that lmms-eval's layout holds for this question, its segment [start, end] or None)."""
    folder = LMMS_EVAL[task.name]
    video = str(entry.get("video"))
    if folder not in TO_MP4:
        return f"{folder}/{video}", None
    stem = video[: -len(Path(video).suffix)] if Path(video).suffix else video
    if folder not in PRE_CUT or not task.bound:
        return f"{folder}/{stem}.mp4", None
    start, end = entry.get("start"), entry.get("end")
    name = f"{stem}_{start}_{end}.mp4"
    if not (data / folder / name).exists() and isinstance(start, (int, float)) and isinstance(end, (int, float)):
        for f in sorted((data / folder).glob(f"{glob_escape(stem)}_*_*.mp4")):
            parts = f.stem[len(stem) + 1 :].split("_")
            try:
                s, e = (float(p) for p in parts)
            except ValueError:  # another video whose name starts with this one's and an underscore
                continue
            if abs(s - start) <= 1e-6 and abs(e - end) <= 1e-6:
                name = f.name
                break
    return f"{folder}/{name}", [start, end]


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
