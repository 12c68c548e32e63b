"""minivtp inside lmms-eval: any checkpoint minivtp loads, pruned or not, on lmms-eval's tasks with lmms-eval's own
prompts, generation settings and scoring.

    pip install -e ".[lmms-eval]" && pip install --no-deps lmms-eval==0.7.3
    lmms-eval --model minivtp --model_args weights=DIR,method=llm-vtp,alpha=0.1,layer=10 --tasks mvbench

lmms-eval (0.6 and later) finds the model through the `lmms_eval.models` entry point in pyproject.toml, which
names `manifest` below. The model args are eval's options under their own names (method, alpha, layer, variant,
head_pool, recent, important, merge, frames, dtype, device, lora_alpha, max_new_tokens, eager, no_compile): they
are read by `python -m minivtp eval`'s own parser, so each has eval's default and check, and a bad one stops the
run with one line. Every answer comes from evaluate.Answerer, the path `minivtp eval` answers with: its generate
for a video LLM (the host's plain conversation around lmms-eval's question text), ask_toy for the toy. Greedy
decoding only: a task asking for sampling or beams is refused. The kept ratio and the settings of each answer
come back with it in lmms-eval's per-sample token counts, which --log_samples writes with the sample: its
"token_counts" entry holds {"minivtp": {...}} (lmms-eval keeps no other field of the model's in the samples file).
"""

import argparse
import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

# the model args: eval's options under their own names (FLAGS: its switches, given as true or false)
ARGS = ("weights", "method", "alpha", "layer", "variant", "head_pool", "recent", "important", "merge", "frames",
        "dtype", "device", "lora_alpha", "max_new_tokens", "eager", "no_compile")
FLAGS = ("eager", "no_compile")
GREEDY = {"temperature": (0, 0.0, None), "do_sample": (False, None), "num_beams": (1, None), "top_p": (1, 1.0, None)}


def manifest():
    """The `lmms_eval.models` entry point: lmms-eval --model minivtp loads MiniVTP below. (Imported here:
    lmms_eval.models reads the entry points while it is first imported, so importing it at the top would make this
    module a circle.)"""
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id="minivtp", simple_class_path="minivtp.evaluation.lmms.MiniVTP")


@dataclass
class Answered(TokenCounts):
    """What produced one answer (settings, kept ratio, seconds), in the slot lmms-eval logs with each sample."""
    minivtp: dict = None

    def to_dict(self) -> dict:
        return dict(super().to_dict(), minivtp=self.minivtp)


def fail(message: str):
    """A bad setting: one line and exit code 2, as minivtp's own commands say it (lmms-eval would otherwise print
    a traceback for any Exception from the model)."""
    print(f"error: minivtp: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def parse_model_args(kwargs: dict) -> argparse.Namespace:
    """lmms-eval's model args (and its --batch_size, --device) as eval's parsed options."""
    from minivtp.__main__ import build_parser
    unknown = sorted(set(kwargs) - set(ARGS) - {"batch_size", "max_batch_size"})
    if unknown:
        fail(f"unknown model arg(s) {', '.join(unknown)}; minivtp takes {', '.join(ARGS)}")
    batch = kwargs.get("batch_size")
    if batch is not None and str(batch) != "1":
        fail(f"batch_size {batch}: minivtp answers one question at a time; give --batch_size 1")
    if "weights" not in kwargs:
        fail("give weights=DIR, the checkpoint (or the toy's) directory, in --model_args")
    argv = ["eval", "--out", "-"]
    for name in ARGS:
        value = kwargs.get(name)
        if value is None or name == "frames":
            continue
        if name in FLAGS:
            if value not in (True, False):
                fail(f"{name}={value}: give true or false")
            argv += [f"--{name.replace('_', '-')}"] if value else []
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit:  # the parser's one line, in the model args' names
        line = err.getvalue().strip().splitlines()[-1].removeprefix("error: ")
        line = re.sub(r"--([a-z-]+)", lambda m: m.group(1).replace("-", "_"), line.split(" (python -m")[0])
        fail(f"model arg {line.removeprefix('argument ')}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        fail(f"max_new_tokens={args.max_new_tokens}: give 1 or more (or leave it out for the task's own)")
    frames = kwargs.get("frames")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        fail(f"frames={frames}: give a whole number of frames, 1 or more")
    args.frames = frames
    return args


class MiniVTP(lmms):
    """lmms-eval's model: generate_until through evaluate.Answerer; loglikelihood and multi-round refused."""

    def __init__(self, **kwargs):
        super().__init__()
        self.args = parse_model_args(kwargs)
        from minivtp.cli import check_device, method_of
        from minivtp.evaluation.loop import Answerer
        try:
            check_device(self.args.device)
            if not Path(self.args.weights).is_dir():
                raise ValueError(f"weights={self.args.weights}: no such directory")
            self.answerer = Answerer(self.args, method_of(self.args))  # checks the settings, loads the checkpoint once
        except (ValueError, ImportError) as e:
            fail(str(e))
        if self.args.frames is not None:
            from minivtp.lab import toy
            if self.answerer.toy and self.args.frames != toy.T:
                fail(f"frames={self.args.frames}: the toy's videos have {toy.T} frames")
            if not self.answerer.toy:
                self.answerer.pipe.vm.frames = self.args.frames  # the frames read from each video
        a = self.args
        self.settings = dict(weights=str(a.weights), method=a.method if self.answerer.method is not None or
                             a.method == "prumerge+" else None, alpha=a.alpha, layer=a.layer, variant=a.variant,
                             head_pool=a.head_pool, dtype=a.dtype, device=a.device,
                             frames=None if self.answerer.toy else self.answerer.pipe.vm.frames)
        if a.method == "look-m":
            self.settings.update(recent=a.recent, important=a.important, merge=a.merge, layer=None)

    def max_new_tokens(self, gen_kwargs: dict) -> int:
        """The task's max_new_tokens (128, as `minivtp answer`, if it names none) unless the model args give one;
        greedy decoding, or one line refusing."""
        for key, allowed in GREEDY.items():
            if key in gen_kwargs and gen_kwargs[key] not in allowed:
                fail(f"the task asks for {key}={gen_kwargs[key]}; minivtp decodes greedily "
                     "(temperature 0, one beam, no sampling)")
        n = self.args.max_new_tokens or gen_kwargs.get("max_new_tokens", 128)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            fail(f"the task asks for max_new_tokens={n}; give max_new_tokens=N (1 or more) in --model_args")
        return n

    def answer(self, video: str, question: str, n: int):
        """(text, kept_ratio, prefill_s, decode_s) of one question about one video: Answerer's path, the pipeline's
        (minivtp/evaluation/pipeline.py)."""
        from minivtp.evaluation.loop import answered
        if self.answerer.toy:
            from minivtp.lab import toy
            if any(w not in toy.ID for w in question.split()):
                raise ValueError(f"the toy knows only its own words ({' '.join(toy.VOCAB)}); the question is "
                                 f"{question!r}")
            text, _, facts = answered(self.answerer, self.answerer.ask_toy({"question": question.strip(),
                                                                            "candidates": []}, Path(video)))
            return text, facts
        frames, _ = self.answerer.pipe.read(video)
        return answered(self.answerer, self.answerer.generate(frames, question, "plain", n))

    def generate_until(self, requests) -> list:
        from tqdm import tqdm
        out = []
        for req in tqdm(requests, disable=self.rank != 0, desc="minivtp"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            n = self.max_new_tokens(gen_kwargs)
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            visuals = visuals if isinstance(visuals, list) else [visuals]
            if len(visuals) != 1 or not isinstance(visuals[0], str):
                fail(f"{task} doc {doc_id}: minivtp answers about one video file; the task gives "
                     f"{len(visuals)} visual(s) of type {', '.join(sorted({type(v).__name__ for v in visuals}))}")
            try:
                text, facts = self.answer(visuals[0], context, n)
            except ValueError as e:
                fail(f"{task} doc {doc_id}: {e}")
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop)[0]
            facts = dict(self.settings, video=visuals[0], max_new_tokens=n, kept_ratio=facts["kept_ratio"],
                         prefill_s=facts["prefill_s"], decode_s=facts["decode_s"])
            out.append(GenerationResult(text, Answered(minivtp=facts)))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("minivtp answers by generation only (generate_until): loglikelihood tasks "
                                  "are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("minivtp answers one round (generate_until): generate_until_multi_round tasks "
                                  "are not supported")
