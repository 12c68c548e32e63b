"""The paper's benchmarks as they are downloaded: where each one keeps its questions and videos, which frames are
read, the prompt and how an answer becomes a letter. `python -m minivtp eval --benchmark NAME --data DIR` reads
them through `load` and `read_clip`; minivtp/evaluation/loop.py asks the questions.

    benchmark   DIR holds (as downloaded)                                     scored here
    mvbench     json/<task>.json (20 files), video/<source>/... (MVBench)    accuracy per task and overall
    videomme    videomme/test-00000-of-00001.parquet, data/<videoID>.mp4     accuracy per duration and overall
    egoschema   questions.json, subset_answers.json, videos/<q_uid>.mp4      accuracy on the 500 public answers
    videoqa     MSVD_Zero_Shot_QA/, MSRVTT_Zero_Shot_QA/, ActivityNet/,      not here: a GPT judge (files for it)
                TGIF_QA/ (test_q.json, test_a.json, videos)
    vcgbench    Zero_Shot_QA/Benchmarking_QA/*.json, Videos/Benchmarking/    not here: a GPT judge (files for it)

Frames: PLLaVA's evaluation rule for every benchmark (tasks/eval/eval_utils.py, EvalDataset.get_index, lines
298-310): cut [start, end] (in frame numbers, round(seconds * fps)) into n equal segments and read the middle of
each. A worked example: a 40-frame video at 10 fps, MVBench's segment 1.2 s .. 2.0 s, n = 8:

    start_idx = max(0, round(1.2 * 10)) = 12      end_idx = min(round(2.0 * 10), 39) = 20
    seg = (20 - 12) / 8 = 1.0                      frames int(12 + 0.5 + round(1.0 * i)) = 12, 13, ..., 19

    >>> pllava_indices(8, fps=10, max_frame=39, bound=(1.2, 2.0))
    [12, 13, 14, 15, 16, 17, 18, 19]

and the whole video (no segment): start_idx 0, end_idx 39 (the last frame), seg 4.875; for i = 4, round(19.5)
is 20 (half to even), so int(2.4375 + 20) = 22:

    >>> pllava_indices(8, fps=10, max_frame=39)
    [2, 7, 12, 17, 22, 26, 31, 36]

A folder of JPEG frames (MVBench's Episodic Reasoning, TVQA at 3 fps) is numbered from 00001.jpg, so start_idx is
at least 1 and end_idx at most the number of files (read_frame, lines 366-373): 30 files, 2.0 s .. 6.0 s:

    >>> pllava_indices(8, fps=3, max_frame=30, bound=(2.0, 6.0), first_idx=1)
    [6, 8, 9, 10, 12, 14, 15, 16]

Sources (file and line, read at magic-research/PLLaVA 6f49fd2 unless named otherwise):
- MVBench's task table: tasks/eval/mvbench/__init__.py, MVBenchDataset.data_list_info, lines 68-90.
- Its prompt and letter: mvbench/__init__.py qa_template (161-172) and check_ans (10-27); pllava_eval_mvbench.py
  run() (post_query_prompt, answer_prompt "Best option:(", lines 178 and 225). minivtp/evaluation/loop.py has them.
- Open-ended QA: tasks/eval/videoqabench/__init__.py, VideoQABenchDataset.data_list_info (210-257: files, video
  folders, extensions; ActivityNet's names get a "v_" prefix, line 290), the judge's input (save_results, 156-157:
  inference_results.json, a list of {pred, gt, task_type, question, video_path}); pllava_eval_videoqabench.py
  infer_videoqabench (the eval_videoqabench conversation, the text after "Answer: In the video," stripped,
  line 152), max_new_tokens 100 (line 71).
- VideoChatGPT-Bench: tasks/eval/vcgbench/__init__.py, VideoChatGPTBenchDataset.data_list_info (270-303),
  chatgpt_eval (170-214: what the judge reads per task, "pred1"/"question1" for consistency_qa);
  pllava_eval_vcgbench.py infer_vcgbench (eval_vcgbench conversation, stop words "###" and "USER", line 120,
  max_new_tokens 100, line 127) and run() (the result rows, 236-261).
- Video-MME: the official prompt without subtitles, as lmms-eval quotes it (EvolvingLMMs-Lab/lmms-eval,
  lmms_eval/tasks/videomme/utils.py, the comment "Frames / Frames + Audio" above videomme_doc_to_text_subtitle),
  the videos at data/<videoID>.mp4 (videomme_doc_to_visual, also .MP4 and .mkv), the letter by
  extract_characters_regex. The paper (Appendix A.1, Tab. 7) follows "the protocol that excludes subtitles".
- EgoSchema: egoschema/EgoSchema questions.json ("q_uid", "question", "option 0".."option 4"), subset_answers.json
  ({q_uid: 0..4}, 500 answers) and README.md ("a JSON file ... { <question uid> : <correct answer> } where
  correct_answer : int[0 - 4]", sent with validate.py --f); the prompt of lmms-eval's
  lmms_eval/tasks/egoschema/utils.py egoschema_doc_to_text (question, one "A. ..." line per option, "Answer with
  the option's letter from the given choices directly.") and its answer rule
  (egoschema_process_results_generation: the whole option, its sentence or its letter, else -1).

Where the authors' code differs: Visual-AI/PruneVid (LLM-VTP's released code) converts Video-MME and EgoSchema to
MVBench's format (tasks/eval/videomme/__init__.py, tasks/eval/egoshcema/__init__.py: files short.json ...,
egoschema_fullset.json that are not released) and asks them with MVBench's prompt and check_ans. We use the
benchmarks' own prompts, as their files come; expect other numbers than Tab. 7 for that reason too.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from minivtp.hosts.prompts import ANSWER_PROMPT, POST_QUERY  # noqa: F401 (MVBench's, as PLLaVA writes them)

BENCHMARKS = ("mvbench", "videomme", "egoschema", "videoqa", "vcgbench")
OPEN_ENDED = ("videoqa", "vcgbench")  # scored by a GPT judge that we cannot call here


@dataclass(frozen=True)
class Task:
    name: str  # the task_type PLLaVA reports it under
    file: str  # question file, under DIR
    prefix: str  # video folder, under DIR
    data_type: str = "video"  # "video" (a file PyAV decodes), "frame" (a folder of 00001.jpg ...) or "gif"
    bound: bool = False  # its questions carry "start" / "end" in seconds: only that segment is read
    answers: str = None  # open-ended QA: the answers' file (same order as the questions)
    postfix: tuple = ()  # open-ended QA: the extensions tried after the video's name, in order


# MVBenchDataset.data_list_info (tasks/eval/mvbench/__init__.py, lines 68-90), its "DATAS/MVBench/" dropped.
MVBENCH = tuple(Task(name, f"json/{file}", f"video/{prefix}", kind, bound) for name, file, prefix, kind, bound in (
    ("Action Sequence", "action_sequence.json", "star/Charades_v1_480/", "video", True),
    ("Action Prediction", "action_prediction.json", "star/Charades_v1_480/", "video", True),
    ("Action Antonym", "action_antonym.json", "ssv2_video/", "video", False),
    ("Fine-grained Action", "fine_grained_action.json", "Moments_in_Time_Raw/videos/", "video", False),
    ("Unexpected Action", "unexpected_action.json", "FunQA_test/test/", "video", False),
    ("Object Existence", "object_existence.json", "clevrer/video_validation/", "video", False),
    ("Object Interaction", "object_interaction.json", "star/Charades_v1_480/", "video", True),
    ("Object Shuffle", "object_shuffle.json", "perception/videos/", "video", False),
    ("Moving Direction", "moving_direction.json", "clevrer/video_validation/", "video", False),
    ("Action Localization", "action_localization.json", "sta/sta_video/", "video", True),
    ("Scene Transition", "scene_transition.json", "scene_qa/video/", "video", False),
    ("Action Count", "action_count.json", "perception/videos/", "video", False),
    ("Moving Count", "moving_count.json", "clevrer/video_validation/", "video", False),
    ("Moving Attribute", "moving_attribute.json", "clevrer/video_validation/", "video", False),
    ("State Change", "state_change.json", "perception/videos/", "video", False),
    ("Fine-grained Pose", "fine_grained_pose.json", "nturgbd/", "video", False),
    ("Character Order", "character_order.json", "perception/videos/", "video", False),
    ("Egocentric Navigation", "egocentric_navigation.json", "vlnqa/", "video", False),
    ("Episodic Reasoning", "episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", True),
    ("Counterfactual Inference", "counterfactual_inference.json", "clevrer/video_validation/", "video", False),
))

# VideoQABenchDataset.data_list_info (tasks/eval/videoqabench/__init__.py, lines 211-257), under DATAS/VideoQA.
VIDEOQA = (
    Task("MSVD_QA", "MSVD_Zero_Shot_QA/test_q.json", "MSVD_Zero_Shot_QA/videos",
         answers="MSVD_Zero_Shot_QA/test_a.json", postfix=("avi",)),
    Task("MSRVTT_QA", "MSRVTT_Zero_Shot_QA/test_q.json", "MSRVTT_Zero_Shot_QA/videos/all",
         answers="MSRVTT_Zero_Shot_QA/test_a.json", postfix=("mp4",)),
    Task("ActivityNet", "ActivityNet/test_q.json", "ActivityNet/all_test", answers="ActivityNet/test_a.json",
         postfix=("mp4", "mkv", "webm")),
    Task("TGIF_QA", "TGIF_QA/test_q.json", "TGIF_QA/tgif_videos", "gif", answers="TGIF_QA/test_a.json",
         postfix=("gif",)),
)

# VideoChatGPTBenchDataset.data_list_info (tasks/eval/vcgbench/__init__.py, lines 271-303), under DATAS/VCGBench.
VCGBENCH = tuple(Task(name, f"Zero_Shot_QA/Benchmarking_QA/{name}.json", "Videos/Benchmarking",
                      postfix=("mp4", "mkv")) for name in ("generic_qa", "temporal_qa", "consistency_qa"))

VIDEOMME_FILE = "videomme/test-00000-of-00001.parquet"  # lmms-lab/Video-MME, as the hub serves it
VIDEOMME_PROMPT = ("Select the best answer to the following multiple-choice question based on the video. "
                   "Respond with only the letter (A, B, C, or D) of the correct option.")
VIDEOMME_POST = "The best answer is:"
EGOSCHEMA_POST = "\nAnswer with the option's letter from the given choices directly."
VCG_STOP = ("###", "USER")  # infer_vcgbench's stop_criteria_keywords
TASKS = {"mvbench": MVBENCH, "videoqa": VIDEOQA, "vcgbench": VCGBENCH}
TASK_NAMES = {"mvbench": [t.name for t in MVBENCH], "videomme": ["short", "medium", "long"],
              "egoschema": ["subset", "full"], "videoqa": [t.name for t in VIDEOQA],
              "vcgbench": [t.name for t in VCGBENCH]}


LETTERS = "ABCDEFG"  # MVBench's option letters (qa_template); its prompt pieces live with the templates


def qa_text(q: dict) -> str:
    """PLLaVA's qa_template: the question, then the options lettered (A), (B), ..."""
    text = f"Question: {q['question']}\nOptions:\n"
    for i, c in enumerate(q["candidates"]):
        text += f"({LETTERS[i]}) {c}\n"
    return text.rstrip()


def letter_of(text: str):
    """The option letter at the start of an answer that began with "(": "B) a cat" -> "B"; None if there is none."""
    m = re.match(r"\s*\(?\s*([A-Ga-g])\b", text)
    return m.group(1).upper() if m else None


# ------------------------------------------------------------------------------------------------------------
# Which frames: PLLaVA's rule


def pllava_indices(n: int, fps: float, max_frame: int, bound=None, first_idx: int = 0) -> list:
    """EvalDataset.get_index: the middle frame of each of n equal parts of [start_idx, end_idx].

    `max_frame` is the last frame's number (a video: its frame count - 1; a folder numbered from 1: the count).
    No bound: the whole video. A ValueError when the segment leaves the video (PLLaVA would read past its end)."""
    start, end = bound if bound else (-100000, 100000)  # get_index's "no bound"
    start_idx = max(first_idx, round(start * fps))  # subtle: Python's round, half to even, as in get_index
    end_idx = min(round(end * fps), max_frame)
    seg = (end_idx - start_idx) / n
    frames = [int(start_idx + seg / 2 + round(seg * i)) for i in range(n)]  # np.round: half to even as well
    if any(not first_idx <= f <= max_frame for f in frames):
        raise ValueError(f"the segment {start}..{end} s at {fps:g} fps gives frames {frames}, outside the video's "
                         f"{first_idx}..{max_frame}")
    return frames


def read_clip(q: dict, data, n: int):
    """(n frames, each (H, W, 3) uint8; their indices) of question q's video, by PLLaVA's rule, or a ValueError that
    names the file."""
    import torch

    from minivtp.hosts.frames import decode_frames, optional
    path = Path(data) / q["video"]
    if not path.exists():
        raise ValueError(f"{path}: no such {'folder' if q['data_type'] == 'frame' else 'file'}")
    if q["data_type"] == "frame":  # read_frame: fps 3, files 00001.jpg ..., max_frame = the number of files
        Image = optional("PIL.Image", "pillow", "reading a folder of frames")
        indices = pllava_indices(n, 3, len(os.listdir(path)), q["bound"], first_idx=1)
        frames = []
        for i in indices:
            f = path / f"{i:05d}.jpg"
            try:
                img = Image.open(f).convert("RGB")
            except (OSError, ValueError) as e:
                raise ValueError(f"{f}: cannot read this frame ({e})") from None
            pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            frames.append(pixels.view(img.size[1], img.size[0], 3))  # (H, W, 3)
        return frames, indices
    av = optional("av", "av", "reading video files")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            # decord's get_avg_fps is the stream's average frame rate; read_gif assumes 25 fps (line 324)
            fps = 25.0 if q["data_type"] == "gif" else float(stream.average_rate or stream.guessed_rate or 0)
            count = sum(1 for packet in container.demux(stream) if packet.size)
        if count == 0 or fps <= 0:
            raise ValueError(f"{path}: the video has no frames (or no frame rate)")
        indices = pllava_indices(n, fps, count - 1, q["bound"])
        frames, decoded = decode_frames(av, path, indices)
    except ValueError:
        raise
    except Exception as e:  # PyAV raises its own error types for unreadable files
        raise ValueError(f"{path}: cannot decode this video ({e})") from None
    if len(frames) < n:
        raise ValueError(f"{path}: frame {max(indices)} was asked for, but only {decoded} frames decode")
    return frames, indices


# ------------------------------------------------------------------------------------------------------------
# The questions, one dict each: id, task_type, video (its path under DIR), data_type, bound, and either
#   "candidates" + "answer" (a letter, or None where the answer is not public) for multiple choice, or
#   "gt" (and "question1" for consistency) for open-ended QA. "_error" marks what could not even be read.


def load(benchmark: str, data, tasks=None) -> list:
    """Every question of `benchmark` under DIR `data` (only `tasks`, a list of task names, if given)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"--benchmark {benchmark!r} is not one of {', '.join(BENCHMARKS)}")
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: no such folder")
    known = TASK_NAMES[benchmark]
    for t in tasks or []:
        if t not in known:
            raise ValueError(f"--tasks {t!r} is not a task of {benchmark}: {', '.join(known)}")
    questions = {"mvbench": load_mvbench, "videomme": load_videomme, "egoschema": load_egoschema,
                 "videoqa": load_open, "vcgbench": load_open}[benchmark](benchmark, data)
    return [q for q in questions if not tasks or q["task_type"] in tasks]


def read_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read it ({e})") from None


def missing(task: str, path: Path, problem: str) -> dict:  # a task whose file is not there: one error row
    return dict(id=f"{task}/-", task_type=task, video=None, _error=f"{path}: {problem}", _path=str(path))


def load_mvbench(_, data: Path) -> list:
    from minivtp.evaluation import mvbench_layouts as layouts  # PLLaVA's layout or lmms-eval's, told apart per task
    out = []
    for task in MVBENCH:
        kind = layouts.layout(task, data)
        try:
            entries = read_json(data / task.file)
            if not isinstance(entries, list):
                raise ValueError(f"{data / task.file}: holds a JSON {type(entries).__name__}, not a list")
        except ValueError as e:
            out.append(missing(task.name, data / task.file, str(e).split(": ", 1)[-1]))
            continue
        for i, e in enumerate(entries):
            q = dict(id=f"{task.name}/{i}", task_type=task.name, layout=kind, data_type=task.data_type, bound=None)
            if not isinstance(e, dict):
                out.append(dict(q, video=None, _error=f"{data / task.file} entry {i} is not an object"))
                continue
            q.update(video=f"{task.prefix}{e.get('video')}", question=e.get("question"),
                     candidates=e.get("candidates"), answer_text=e.get("answer"))
            if kind == "lmms-eval":  # its own folders; a pre-cut segment is a whole file, read as a video
                q["video"], segment = layouts.lmms_eval_video(task, e, data)
                if segment and not all(isinstance(x, (int, float)) for x in segment):
                    q["_error"] = f"{data / task.file} entry {i} has no start / end seconds"
                q.update(data_type="video", **({"segment": segment} if segment else {}))
                out.append(mc_question(q, e.get("candidates"), e.get("answer")))
                continue
            if task.bound:
                if not all(isinstance(e.get(k), (int, float)) for k in ("start", "end")):
                    q["_error"] = f"{data / task.file} entry {i} has no start / end seconds"
                q["bound"] = [e.get("start"), e.get("end")]
            out.append(mc_question(q, e.get("candidates"), e.get("answer")))
    return out


def mc_question(q, candidates, answer):
    """Multiple choice: the answer as a letter (MVBench names the right candidate; an unknown one is an error)."""
    if "_error" not in q:
        if not isinstance(candidates, list) or not 2 <= len(candidates) <= len(LETTERS):
            q["_error"] = f"question {q['id']} needs 2..{len(LETTERS)} candidates"
        elif answer not in candidates:
            q["_error"] = f"question {q['id']}: its answer is not one of its candidates"
        else:
            q["answer"] = LETTERS[candidates.index(answer)]
    return q


def load_videomme(_, data: Path) -> list:
    path = data / VIDEOMME_FILE
    if not path.exists():
        return [missing(d, path, "no such file") for d in ("short", "medium", "long")]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path} is parquet: reading it needs the optional package 'pyarrow': pip install "
                         "pyarrow (or .[benchmarks])") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's own error types for a broken file
        raise ValueError(f"{path}: cannot read this parquet file ({e})") from None
    need = {"videoID", "question_id", "duration", "question", "options", "answer"}
    if rows and need - set(rows[0]):
        raise ValueError(f"{path}: has no column {', '.join(sorted(need - set(rows[0])))} (Video-MME's test split "
                         f"has {', '.join(sorted(need))})")
    out = []
    for r in rows:
        name = next((f"data/{r['videoID']}.{x}" for x in ("mp4", "MP4", "mkv") if
                     (data / f"data/{r['videoID']}.{x}").exists()), f"data/{r['videoID']}.mp4")
        out.append(dict(id=str(r["question_id"]), task_type=r["duration"], video=name, data_type="video", bound=None,
                        question=r["question"], options=list(r["options"]), answer=r["answer"],
                        candidates=[re.sub(r"^[A-D]\.\s*", "", o) for o in r["options"]],
                        category=r.get("task_type")))
    return out


def load_egoschema(_, data: Path) -> list:
    path = data / "questions.json"
    if not path.exists():
        return [missing("full", path, "no such file")]
    answers = read_json(data / "subset_answers.json") if (data / "subset_answers.json").exists() else {}
    entries = read_json(path)
    if not isinstance(entries, list) or not isinstance(answers, dict):
        raise ValueError(f"{path} must hold a list of questions and subset_answers.json an object q_uid -> 0..4")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            out.append(dict(id=str(i), task_type="full", video=None, _error=f"{path} entry {i} is not an object"))
            continue
        uid = e.get("q_uid", str(i))
        options = [e.get(f"option {k}") for k in range(5)]
        q = dict(id=uid, task_type="subset" if uid in answers else "full", video=f"videos/{uid}.mp4",
                 data_type="video", bound=None, question=e.get("question"), candidates=options,
                 options=[f"{'ABCDE'[k]}. {o}" for k, o in enumerate(options)],
                 answer="ABCDE"[answers[uid]] if uid in answers else None)
        if not isinstance(q["question"], str) or not all(isinstance(o, str) for o in options):
            q["_error"] = f"{path} entry {i} needs a question and option 0..option 4"
        out.append(q)
    return out


def load_open(benchmark: str, data: Path) -> list:
    out = []
    for task in TASKS[benchmark]:
        try:
            qs = read_json(data / task.file)
            ans = read_json(data / task.answers) if task.answers else [{}] * len(qs)
            if not isinstance(qs, list) or not isinstance(ans, list) or len(ans) != len(qs):
                raise ValueError(f"{data / task.file}: needs a list of questions and {task.answers or 'nothing'} "
                                 "an answer for each, in the same order")
        except ValueError as e:
            out.append(missing(task.name, data / task.file, str(e).split(": ", 1)[-1]))
            continue
        for i, (e, a) in enumerate(zip(qs, ans)):
            if not isinstance(e, dict) or not isinstance(a, dict):
                out.append(dict(id=f"{task.name}/{i}", task_type=task.name, video=None,
                                _error=f"{data / task.file} entry {i} (or its answer) is not an object"))
                continue
            e = dict(e, **a)  # test_q.json and test_a.json pair up by position (line 285)
            name = str(e.get("video_name"))
            if task.name == "ActivityNet":
                name = "v_" + name
            tried = [f"{task.prefix}/{name}.{x}" for x in task.postfix]
            q = dict(id=str(e.get("question_id", f"{task.name}/{i}")), task_type=task.name, data_type=task.data_type,
                     bound=None, video=next((p for p in tried if (data / p).exists()), tried[0]))
            if not any((data / p).exists() for p in tried):
                q["_error"] = f"no video named {name} ({', '.join(str(data / p) for p in tried)})"
                q["_kind"] = "missing"
            if benchmark == "videoqa":
                q.update(question=e.get("question"), gt=e.get("answer"))
            elif task.name == "consistency_qa":
                q.update(question=e.get("Q1"), question1=e.get("Q2"), gt=e.get("A"))
            else:
                q.update(question=e.get("Q"), gt=e.get("A"))
            out.append(q)
    return out


# ------------------------------------------------------------------------------------------------------------
# Prompts and answers


def prompt_of(benchmark: str, q: dict, question: str = None):
    """(the user's text, PLLaVA's conversation template) for question q (question: consistency's second one)."""
    if benchmark == "mvbench":
        return qa_text(q) + POST_QUERY, "eval_mvbench"
    if benchmark == "videomme":  # official: instruction, question, one "A. ..." line per option, "The best answer is:"
        return "\n".join([VIDEOMME_PROMPT, q["question"], *q["options"], VIDEOMME_POST]), "plain"
    if benchmark == "egoschema":
        return q["question"] + "".join("\n" + o for o in q["options"]) + EGOSCHEMA_POST, "plain"
    if benchmark == "videoqa":
        return q["question"], "eval_videoqabench"
    return question or q["question"], "eval_vcgbench"


def letter(benchmark: str, text: str, q: dict):
    """The option letter in a generated answer, by each benchmark's own rule; None when there is none."""
    if benchmark == "mvbench":  # the answer began with "(": its first letter A-G
        return letter_of(text)
    if benchmark == "videomme":  # extract_characters_regex
        s = text.strip()
        for prefix in ("The best answer is", "The correct answer is", "The answer is", "The answer",
                       "The best option isThe correct option is", "Best answer:Best option:"):  # sic: lmms-eval's
            s = s.replace(prefix, "")  # list misses two commas, so two of its prefixes are glued together
        m = re.search("[ABCD]", s)  # (its "more than 10 words and no letter" case is this one too)
        return m[0] if m else None
    # egoschema_process_results_generation: the prediction equals a whole option, its sentence, or its letter
    s = text.strip()
    for k, o in enumerate(q["options"]):
        full = o if o.endswith(".") else o + "."
        if s in (full, full.split(". ", 1)[1] if ". " in full else full):
            return "ABCDE"[k]
    for k in range(5):
        if s in ("ABCDE"[k], "ABCDE"[k] + "."):
            return "ABCDE"[k]
    return None


def open_answer(benchmark: str, text: str) -> str:
    """What PLLaVA's scripts keep of a generated open-ended answer."""
    if benchmark == "vcgbench":  # generation stops at a stop word; we cut there (PLLaVA keeps the word itself)
        for stop in VCG_STOP:
            text = text.split(stop)[0]
    return text.strip()


# ------------------------------------------------------------------------------------------------------------
# Files for scoring elsewhere


def judge_rows(benchmark: str, rows: list, questions: dict) -> list:
    """The rows of PLLaVA's inference_results.json, as its GPT-judge scripts read them."""
    out = []
    for r in rows:
        if "error" in r:
            continue
        q = questions.get(r["id"])
        if q is None:
            continue
        if benchmark == "vcgbench" and q["task_type"] == "consistency_qa":
            # subtle: PLLaVA's run() swaps question and question1 before writing; we pair each question with the
            # answer that was generated for it (Q1 -> pred, Q2 -> pred1), as the judge's prompt reads them
            out.append(dict(pred=r["prediction"], pred1=r["prediction1"], gt=q["gt"], video=r["video"],
                            task_type=q["task_type"], question=q["question"], question1=q["question1"]))
        else:
            out.append(dict(pred=r["prediction"], gt=q["gt"], task_type=q["task_type"], question=q["question"],
                            video_path=r["video"]))
    return out


def write_outputs(benchmark: str, out: Path, rows: list, questions: list) -> list:
    """Write what the benchmark's own scorer reads beside --out; lines that say how to score."""
    by_id = {q["id"]: q for q in questions}
    if benchmark in OPEN_ENDED:
        folder = out.with_name(out.name + ".judge")
        folder.mkdir(parents=True, exist_ok=True)
        judged = judge_rows(benchmark, rows, by_id)
        (folder / "inference_results.json").write_text(json.dumps(judged, indent=1))
        script = {"videoqa": "tasks.eval.videoqabench.pllava_eval_videoqabench",
                  "vcgbench": "tasks.eval.vcgbench.pllava_eval_vcgbench"}[benchmark]
        extra = " --test_datasets " + "-".join(sorted({q["task_type"] for q in questions})) \
            if benchmark == "videoqa" else ""
        return [f"{benchmark} is scored by GPT-3.5-Turbo-0125 as a judge (the paper, Sec. 4.1); minivtp cannot call "
                f"it, and prints no score of its own.",
                f"predictions for the judge: {folder / 'inference_results.json'} ({len(judged)} answers; "
                f"{len(rows) - len(judged)} questions with an error line are not in it)",
                f"to score: in a PLLaVA checkout with OPENAI_API_KEY set, python -m {script} "
                f"--pretrained_model_name_or_path unused --num_frames 16 --save_path {folder.resolve()}{extra}  "
                f"(it finds inference_results.json there, skips inference and asks the judge)"]
    if benchmark == "egoschema":
        path = out.with_name(out.name + ".submission.json")
        answers = {r["id"]: ("ABCDE".index(r["letter"]) if r.get("letter") else -1) for r in rows if "error" not in r}
        path.write_text(json.dumps(answers, indent=1))
        return [f"EgoSchema's answers for all {len(answers)} questions: {path} ({{q_uid: 0..4}}, -1 where the answer "
                f"named no option); the full set is scored by its server: python validate.py --f {path} "
                f"(egoschema/EgoSchema), or Kaggle's egoschema-public"]
    return []
