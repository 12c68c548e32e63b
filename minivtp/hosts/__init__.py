"""The host video LLMs: one file per host family or vision tower, and the contract every host keeps, written once.

`weights.load_video_llm(dir)` reads config.json's model_type and hands back a host. Whatever the host, the path
from frames to the rows LLM-VTP prunes is the same five calls, and no caller ever asks which host it holds:

    vm = weights.load_video_llm("pllava-7b")                  # llava.py, llava_onevision.py, instructblip.py, ...
    tok = Tokenizer.from_file("pllava-7b")
    frames, note = read_frames("clip.mp4", vm.frames, vm.sample_indices)     # frames.py: the host's sampling
    pixels = vm.preprocess(frames)                            # (T, 3, S, S), the host's resize and normalisation
    ids, extra = vm.encode(tok, "What is he doing?")          # the host's template, ONE video placeholder in ids
    p = vm.prompt(ids, pixels, **extra)                       # Prompt(embeds, video, positions), drawn below
    generate(vm.llm, p.embeds, 64, video=p.video, positions=p.positions, alpha=0.1, layer=10)

What `prompt` returns, for a system prompt of 3 rows, 2 frames of 4 tokens and a question of 5 rows:

    rows        0 1 2 | 3 4 5 6 | 7 8 9 10 | 11 12 13 14 15
                prefix| frame 0 | frame 1  | question ("ASSISTANT:" included)
    embeds      (1, 16, C): the prefix's and the question's token embeddings, the video's rows spliced in between
                where the placeholder was (Eq. 1, `Host.splice`, the one place it is written)
    video       VideoSpan(start=3, frames=2, tokens_per_frame=4): what LLM-VTP ranks, frame by frame
    positions   (16,) = 0..15 for every host here: RoPE's position of each row (a host whose positions are not the
                rows' numbers, Qwen-VL's 3D positions, gives (3, N))

`extra` is what a host's `prompt` needs beside the ids (the Q-Former hosts: the question's BERT ids, which their
Q-Former reads); `vm.logits(ids, pixels, **extra)` is the float32 logits of every prompt row, what the tests compare
with transformers; `vm.cells(Nv)` maps each of a frame's tokens to its (row, column) on the frame's grid, or None where
a token has no place (a newline row, a [CLS] token), for the heatmaps; `vm.stop_text` ends an answer where a host's
next turn begins. PruMerge+ (minivtp/rivals/prumerge.py) asks a host for `class_attention(pixels)` and splices what
it keeps with `splice`; a host without a [CLS] token says so in one line.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Prompt:
    embeds: torch.Tensor  # (1, N, C): the prompt's rows, the video's spliced in (Eq. 1)
    video: object  # vtp.VideoSpan: what LLM-VTP ranks (PruMerge+: rivals.prumerge.MergedVideo, already pruned)
    positions: torch.Tensor  # (N,) RoPE positions of the rows, or (3, N) for a 3D-position host
    added: dict = None  # Qwen3-VL's DeepStack: {layer i: (N, C)} added after layer i+1 (model.forward_layers)

    def __iter__(self):  # embeds, video, positions = vm.prompt(...)
        return iter((self.embeds, self.video, self.positions))


def encode_text(tok, text: str, placeholder: str, token: int) -> list:
    """Token ids of a prompt with ONE video placeholder. A tokenizer that knows the placeholder encodes it; one that
    does not need to: LLaVA-NeXT's id is -200, outside any vocabulary, and its tokenizer_image_token encodes the
    text on each side and puts the id between. So do I."""
    if token >= 0:
        return tok.encode(text)
    before, sep, after = text.partition(placeholder)
    if not sep:
        raise ValueError(f"the prompt holds no {placeholder}")
    return tok.encode(before) + [token] + tok.encode(after, bos=False)


class Host(nn.Module):
    """What every host shares: the splice of Eq. 1, the tokenizer check, the logits, and the defaults of the
    contract above. A host sets `llm`, `image_token`, `placeholder`, `frames` and writes `preprocess`,
    `prompt_text` (or `encode`) and `prompt`."""

    stop_text = None  # ST-LLM, VideoChat2: the answer ends where the next "###" turn begins

    def encode(self, tok, question: str, template: str = None):
        """(ids (N0,) with ONE placeholder, extra keywords for `prompt`): the host's template around the question.
        `template` names one of PLLaVA's conversations (hosts/prompts.py) where a benchmark asks for its own."""
        return torch.tensor(encode_text(tok, self.prompt_text(question, template), self.placeholder,
                                        self.image_token)), {}

    def check_tokenizer(self, tok, where):
        """One error before any video is read when the tokenizer's placeholder is not the model's video token."""
        if self.image_token >= 0 and tok.added.get(self.placeholder) != self.image_token:
            raise ValueError(f"{where}: the tokenizer's {self.placeholder} is {tok.added.get(self.placeholder)}, "
                             f"the model's video token is {self.image_token}")

    def splice(self, ids: torch.Tensor, video: torch.Tensor, after: torch.Tensor = None):
        """Eq. 1: X = [X_v; X_q]. Token ids (N0,) with ONE placeholder and the video's rows (n, C) -> embeds
        (1, N, C) and where the video starts. Unlike the paper's equation, a system prompt comes first (the rows
        before the placeholder), and `after` (rows that belong to no frame, such as OneVision's newline) goes
        between the video and the question."""
        where = (ids == self.image_token).nonzero().flatten()
        if where.numel() != 1:
            raise ValueError(f"the prompt must hold exactly one video placeholder (token {self.image_token}, "
                             f"{self.placeholder}); it holds {where.numel()}")
        i = where.item()
        e = self.llm.embed
        parts = [e(ids[:i]), video.to(e.weight.dtype)] + ([after.to(e.weight.dtype)] if after is not None else [])
        return torch.cat(parts + [e(ids[i + 1 :])])[None], i  # (1, N, C), the first video row

    @torch.no_grad()
    def logits(self, ids, pixels, **extra):
        """(N, V) float32: the logits of every prompt row, unpruned."""
        p = self.prompt(ids, pixels, **extra)
        pos = torch.arange(p.embeds.shape[1], device=p.embeds.device)  # the rows' order; positions turn them
        cos, sin = self.llm.rope(p.positions)
        return self.llm.head(self.llm.forward_layers(p.embeds, cos, sin, pos, added=p.added))[0].float()

    def cells(self, Nv: int):
        """([(row, column) or None for each of a frame's Nv tokens], the grid's (rows, columns)); None when the
        host's tokens have no place on the frame."""
        return None

    def class_attention(self, pixels):
        raise ValueError(f"PruMerge+ ranks patches by their attention to the vision tower's [CLS] token; "
                         f"{type(self).__name__} has none, so PruMerge+ does not apply")
