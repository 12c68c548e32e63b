"""The one path from a checkpoint and a video to an answer. `python -m minivtp answer`, `eval` and `explore` all go
through it, so a host, a rival or a decode step added once works in each.

    pipe = Pipeline.load("pllava-7b", dtype="bfloat16", device="cuda")      # the host, its tokenizer, a decoder
    frames, note = pipe.read("clip.mp4")                                   # the host's frame count and sampling
    a = pipe.answer(frames, "What is he doing?", Method(alpha=0.1, layer=10), max_new_tokens=64)
    a.text, a.kept, a.video_tokens, a.generation.cache_len

The steps, each the host contract's (minivtp/hosts/__init__.py): pixels = vm.preprocess(frames); ids, extra =
vm.encode(tok, question, template); p = vm.prompt(ids, pixels, **extra) (PruMerge+ builds it instead: it prunes
in the tower); then generate.generate on the LLM, and the answer decoded up to the host's stop text.
"""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minivtp.cli import DTYPES, check_device, zero_count_note
from minivtp.fast.batch import Question
from minivtp.generate import Generation, generate
from minivtp.hosts import Prompt
from minivtp.hosts.frames import read_frames


@dataclass
class Answer:
    text: str  # the answer, special tokens and the host's stop text removed
    generation: Generation  # tokens, kept positions, cache rows, timings
    prompt: Prompt  # embeds, the video's span, positions
    video_tokens: int  # the video's rows unpruned
    kept: int  # the video tokens that went on past layer M (PruMerge+: that reached the LLM)
    encode_s: float  # the vision tower, projector and splice, in seconds
    note: str = None  # said once to the user (the released count keeping no token of a frame)

    @property
    def kept_ratio(self) -> float:
        return self.kept / self.video_tokens


class Pipeline:
    """A host loaded once, its tokenizer, and the decoder every question is decoded with (fast.decoder_for)."""

    def __init__(self, vm, tok, device, decoder=None, load_s: float = 0.0):
        self.vm, self.tok, self.device, self.decoder, self.load_s = vm, tok, device, decoder, load_s
        self.indices = None  # the frames the last read() kept

    @classmethod
    def load(cls, weights_dir, dtype: str = "float32", device: str = "cpu", lora_alpha=None, method=None,
             step: str = None, loop: bool = False, progress=True):
        """Check what can be checked first (the device, PruMerge+ on a Q-Former host), then load with a progress
        line per shard. `step` names the decode step, `loop` says many questions will come (fast.decoder_for);
        step None: the readable path."""
        import weights
        from minivtp.fast import decoder_for
        from minivtp.tokenizer import Tokenizer

        check_device(device)
        check_fits(weights_dir, method)
        t = time.perf_counter()

        def shard(i, n, file):
            print(f"loading shard {i + 1}/{n}: {file.name}  ({time.perf_counter() - t:.0f} s)", file=sys.stderr,
                  flush=True)

        vm = weights.load_video_llm(weights_dir, dtype=DTYPES[dtype], device=device, lora_alpha=lora_alpha,
                                    progress=shard if progress else None)
        tok = Tokenizer.from_file(weights_dir)
        vm.check_tokenizer(tok, weights_dir)
        return cls(vm, tok, device, decoder_for(vm.llm, step, loop), time.perf_counter() - t)

    def read(self, video):
        """(frames, a note when the video had fewer frames than the host reads), as the host samples them; the
        indices of the frames read are kept in `self.indices` (what answer --json and eval's rows record)."""
        picked = []  # the last sampling wins: a container that lied about its count is read again
        frames, note = read_frames(video, self.vm.frames,
                                   lambda n_available, n: picked.append(self.vm.sample_indices(n_available, n))
                                   or picked[-1])
        self.indices = [int(i) for i in picked[-1]] if picked else None
        return frames, note

    @torch.no_grad()
    def prompt(self, frames, question: str, template: str = None, method=None) -> Prompt:
        """The prompt's rows for `question` about `frames`: the host's template, the vision tower, Eq. 1."""
        pixels = self.vm.preprocess(frames).to(self.device)
        ids, extra = self.vm.encode(self.tok, question, template)
        build = getattr(method, "prompt", None)  # PruMerge+ prunes while the prompt is built, in the tower
        if build is not None:
            return build(self.vm, ids.to(self.device), pixels, **extra)
        return self.vm.prompt(ids.to(self.device), pixels, **extra)

    def answer(self, frames, question: str, method=None, max_new_tokens: int = 64, template: str = None) -> Answer:
        """The host's answer, pruned by `method` (a generate.Method, a rival of minivtp/rivals/, or None: all)."""
        job = self.begin(frames, question, method, max_new_tokens, template)
        return self.finish(job, generate_for(self.vm.llm, job.question, job.method, self.decoder))

    def begin(self, frames, question: str, method=None, max_new_tokens: int = 64, template: str = None) -> "Job":
        """Everything before the LLM answers: the prompt built, and what generate will be asked (Job.question).
        eval's --batch-size answers many jobs' questions at once (fast.batch.generate_many), then finishes each."""
        t = time.perf_counter()
        p = self.prompt(frames, question, template, method)
        if p.embeds.is_cuda:
            torch.cuda.synchronize()
        encode_s = time.perf_counter() - t
        n_max = self.vm.llm.cfg.max_seq_len
        if p.embeds.shape[1] + max_new_tokens > n_max:
            raise ValueError(f"the prompt is {p.embeds.shape[1]} rows ({video_rows(p.video)} of them video) "
                             f"and {max_new_tokens} new tokens more would exceed the model's {n_max} positions")
        in_llm = None if hasattr(method, "prompt") else method  # PruMerge+ already pruned: the LLM runs unpruned
        rows = torch.arange(p.embeds.shape[1], device=p.positions.device)
        positions = None if torch.equal(p.positions, rows) else p.positions  # a Qwen-VL host's 3D positions
        q = Question(p.embeds, p.video if in_llm else None, max_new_tokens, self.tok.eos, positions, p.added)
        return Job(q, p, in_llm, hasattr(method, "prompt"), encode_s, zero_count_note(in_llm, p.video))

    def finish(self, job: "Job", out: Generation) -> Answer:
        """The answer's text, up to the host's stop text, and what was kept, from the LLM's Generation."""
        text = self.tok.decode([t for t in out.tokens.tolist() if t != self.tok.eos], skip_special=True)
        if self.vm.stop_text:  # ST-LLM, VideoChat2: the answer ends where the next "###" turn begins
            text = text.split(self.vm.stop_text)[0]
        video = job.prompt.video
        if job.merged:
            n_video, kept = video.unpruned_rows, video.end - video.start
        else:
            n_video = video_rows(video)  # not end - start: frames may have text between them (Qwen3-VL)
            kept = int(out.kept.numel()) if job.method else n_video
        return Answer(text, out, job.prompt, n_video, kept, job.encode_s, job.note)


@dataclass
class Job:
    """A question on its way: what generate is asked, the prompt it came from, how it was pruned."""

    question: Question  # the LLM's part: embeds, the video to prune (None: nothing), max_new_tokens, eos_id
    prompt: Prompt
    method: object  # what prunes inside the LLM: a generate.Method, FastV, Look-M, or None
    merged: bool  # PruMerge+ pruned the video in the tower
    encode_s: float
    note: str = None


def video_rows(video) -> int:
    """The video's rows in a prompt: T * Nv (a PruMerge+ prompt: what it kept)."""
    return video.end - video.start if not hasattr(video, "frames") else video.frames * video.tokens_per_frame


def generate_for(llm, q: Question, method=None, decoder=None) -> Generation:
    """generate on one question as the pipeline asks it (the one call of generate on this path). The fast path's
    decoders rotate a row by its row, so a host with 3D positions decodes through generate's own functions."""
    plain = q.positions is None and not q.added
    return generate(llm, q.embeds, q.max_new_tokens, video=q.video, method=method if q.video is not None else None,
                    eos_id=q.eos_id, decoder=decoder if plain else None, positions=q.positions, added=q.added)


def check_fits(weights_dir, method):
    """What can be refused before a checkpoint is read (eval: before the questions are): PruMerge+ on a Q-Former
    host, whose tokens are queries, none of them a [CLS]."""
    import weights
    if getattr(method, "name", None) == "prumerge+" and Path(weights_dir).is_dir():
        if weights.read_config(Path(weights_dir)).get("model_type") in weights.QFORMER_HOSTS:
            from minivtp.hosts.instructblip import PRUMERGE_ERROR
            raise ValueError(PRUMERGE_ERROR)
