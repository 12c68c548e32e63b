"""A toy video LLM that a laptop can train, so LLM-VTP's claim can be seen without a 7B model.

The task. A "video" is T=8 frames of a 3x3 grid of patches (Nv=9, 72 video tokens). Two to four objects, each a
distinct shape in a distinct colour, sit in distinct random frames at random cells; every other patch is
background clutter. The question asks the model to name one of them, and then say what it looks like:

    name a shape in the video ASSISTANT:    ->  triangle red   (any shape in the video, then that object's colour)
    name a colour in the video ASSISTANT:   ->  blue star      (any colour in the video, then that object's shape)

The model chooses which object; the answer is right when the first word is in the video and the second word
belongs to the same object. Shapes, colours, frames and cells are dealt at random, so nothing but the video
tells the answer.

Why this task, and not "colour of triangle". A one-word answer is computed in the prompt's last row, and a
small model reads it out of the video in layer 1: the question rows carry it past any pruning, so which video
tokens are kept would not matter. Here the second word is decoded *after* the prompt, from the KV cache: the
row of the first word ("triangle") has to find the triangle in the video then, through whatever LLM-VTP kept.
The first word needs the question to look at every object (which shapes are there?); that look, at layer M,
is what LLM-VTP ranks. Drop the named object's patch and the second word is a guess.

Why the template words. Each question row's attention in a head lands on about one patch, so the question's
rows together look at only a handful of patches. With the three rows of "name a shape" alone (12 looks over 4
heads) a model trained the same way sometimes named an object no question row had looked at in layer 1 (it knew
of it through a later video row), and LLM-VTP then dropped the patch the second word needed. Real prompts end in
template words ("ASSISTANT:"); with four of them here (7 question rows) the looks cover the objects.
`python -m minivtp experiments` reports, beside each accuracy, how often the named object's patch was kept.

The model. A patch's features (shape and colour channels, frame and cell one-hots, an objectness channel,
clutter noise) go through one linear projector to the width of `minivtp.model.Transformer`, used unchanged
as the language model:

    <s> USER: [8 x 9 video rows] name a shape in the video ASSISTANT:   ->  triangle red

    OMP_NUM_THREADS=1 python -m minivtp toy train   # how the shipped weights were made: 6,000 steps, 10-12 minutes
                                                    # (minivtp/assets/toy/, train_log.txt); a retraining gives the
                                                    # same accuracy, not the same weights (README)
    python -m minivtp toy export-mvbench DIR        # held-out questions as a benchmark for python -m minivtp eval

Training is teacher-forced on one object drawn at random from the video, so the first word learns "any object
that is there" and the second "that object's other attribute". A short curriculum (one object, then two, then
two to four) gets it past the start.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minivtp import checkpoint
from minivtp.hf_config import config_from_hf
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

T, ROWS, COLS = 8, 3, 3
NV = ROWS * COLS
SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = ["red", "green", "blue", "yellow"]
WORDS = ["<pad>", "<s>", "</s>", "USER:", "name", "a", "shape", "colour", "in", "the", "video", "ASSISTANT:"]
VOCAB = WORDS + SHAPES + COLOURS
ID = {w: i for i, w in enumerate(VOCAB)}
PREFIX = ["<s>", "USER:"]  # the rows before the video
N_NOISE = 8
P = len(SHAPES) + len(COLOURS) + T + ROWS + COLS + 1 + N_NOISE  # patch feature size (1: objectness)
KINDS = ("shape", "colour")  # "name a shape ...", "name a colour ..."
TEMPLATE = ["in", "the", "video", "ASSISTANT:"]  # the rows after the question word, as a chat template ends
DEFAULT_LAYER = 1  # M for the toy: the layer whose question attention finds the objects (python -m minivtp experiments)
ASSETS = Path(__file__).parents[1] / "assets" / "toy"


@dataclass
class Object:
    shape: str
    colour: str
    frame: int
    row: int
    col: int

    @property
    def cell(self) -> int:  # its index within the frame's Nv tokens
        return self.row * COLS + self.col


@dataclass
class Sample:
    features: torch.Tensor  # (T, Nv, P)
    objects: list
    question: list  # question(kind): ["name", "a", "shape" | "colour", *TEMPLATE]
    answer: list  # one right answer (two words), the one training is forced on; others are right too

    @property
    def kind(self) -> str:  # what the question asks for first: "shape" or "colour"
        return self.question[2]


def question(kind: str) -> list:
    """The question's words, the rows after the video: "name a shape in the video ASSISTANT:"."""
    return ["name", "a", kind] + TEMPLATE


def clutter(g: torch.Generator) -> torch.Tensor:
    """(T, ROWS, COLS, P): every patch's background, with where it is (frame, row, column one-hots)."""
    f = torch.zeros(T, ROWS, COLS, P)
    s, fr = 0, len(SHAPES) + len(COLOURS)
    r, co = fr + T, fr + T + ROWS
    # clutter: faint random shape and colour evidence, and pure noise channels
    f[..., s : s + len(SHAPES) + len(COLOURS)] = 0.1 * torch.rand(T, ROWS, COLS, len(SHAPES) + len(COLOURS), generator=g)
    f[..., -N_NOISE:] = 0.2 * torch.randn(T, ROWS, COLS, N_NOISE, generator=g)
    # where every patch is: its frame, row and column (a real video LLM gets these from RoPE and the encoder)
    f[..., fr : fr + T] += torch.eye(T)[:, None, None, :]
    f[..., r : r + ROWS] += torch.eye(ROWS)[None, :, None, :]
    f[..., co : co + COLS] += torch.eye(COLS)[None, None, :, :]
    return f


def draw(f: torch.Tensor, o: Object):
    """One object into its patch: its shape and colour channels, and objectness."""
    cell = f[o.frame, o.row, o.col]
    cell[: len(SHAPES) + len(COLOURS)] = 0
    cell[SHAPES.index(o.shape)] = 1.0
    cell[len(SHAPES) + COLOURS.index(o.colour)] = 1.0
    cell[-N_NOISE - 1] = 1.0  # objectness: something is here (a vision encoder's saliency, in one channel)


def make_sample(g: torch.Generator, kind: str = None, n_objects: int = None) -> Sample:
    """One video and one question about it. `kind` is one of KINDS, or None for a random one; `n_objects` 1..4,
    or None for 2 to 4 at random (1 only in the first steps of training, a curriculum)."""
    pick = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
    n_objects = n_objects or 2 + pick(3)
    kind = kind or KINDS[pick(len(KINDS))]
    f = clutter(g)
    shapes = [SHAPES[i] for i in torch.randperm(len(SHAPES), generator=g).tolist()]
    colours = [COLOURS[i] for i in torch.randperm(len(COLOURS), generator=g).tolist()]
    frames = torch.randperm(T, generator=g).tolist()
    objects = [Object(shape, colour, frame, pick(ROWS), pick(COLS))
               for shape, colour, frame in list(zip(shapes, colours, frames))[:n_objects]]
    for o in objects:
        draw(f, o)
    target = objects[pick(n_objects)]
    answer = [target.shape, target.colour] if kind == "shape" else [target.colour, target.shape]
    return Sample(f.reshape(T, NV, P), objects, question(kind), answer)


def named_object(sample: Sample, words):
    """The object the answer's first word names, or None when no object in the video has it."""
    attr = sample.kind
    return next((o for o in sample.objects if getattr(o, attr) == words[0]), None)


def is_right(sample: Sample, words) -> bool:
    """The first word names an object in the video and the second is that object's other attribute."""
    o = named_object(sample, words)
    if o is None or len(words) < 2:
        return False
    return words[1] == (o.colour if sample.kind == "shape" else o.shape)


def chance(kind: str) -> float:
    """Naming a present object, then guessing its other attribute among four."""
    return 1 / 4


def answer_patch(sample: Sample, words) -> int:
    """Prompt position of the named object's patch (-1 when nothing is named): what the second word must read."""
    o = named_object(sample, words)
    return -1 if o is None else len(PREFIX) + o.frame * NV + o.cell


# ------------------------------------------------------------------------------------------------------------
# The toy's frames as pictures, so that benchmark trees (real video files, folders of JPEGs) can hold its videos


BLOCK = 8  # pixels per feature value, each way: one JPEG block, flat, so JPEG and video codecs keep it


def frame_image(features: torch.Tensor) -> torch.Tensor:
    """One frame's features (Nv, P) -> a grey picture (Nv*BLOCK, P*BLOCK, 3) uint8: value v in [-1, 1] is the
    level round((v + 1) * 127.5), each value a BLOCK x BLOCK square. frame_features reads it back."""
    level = ((features.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (Nv, P)
    img = level.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)  # (Nv*BLOCK, P*BLOCK)
    return img[..., None].expand(-1, -1, 3).contiguous()


def frame_features(img: torch.Tensor) -> torch.Tensor:
    """A picture frame_image drew (after a codec: each square is averaged) -> the frame's features (Nv, P)."""
    if tuple(img.shape) != (NV * BLOCK, P * BLOCK, 3):
        raise ValueError(f"a toy frame is {NV * BLOCK}x{P * BLOCK} pixels (RGB); this one is {tuple(img.shape)}")
    level = img.float().mean(-1).view(NV, BLOCK, P, BLOCK).mean((1, 3)).round()  # (Nv, P)
    return level / 127.5 - 1


# ------------------------------------------------------------------------------------------------------------
# The model: projector + minivtp's Transformer


def toy_config() -> Config:
    return Config(vocab_size=len(VOCAB), dim=64, n_layers=4, n_heads=4, n_kv_heads=4, hidden_dim=128,
                  norm_eps=1e-5, max_seq_len=256)


class ToyVideoLLM(nn.Module):
    def __init__(self, cfg: Config = None):
        super().__init__()
        cfg = cfg or toy_config()
        self.projector = nn.Linear(P, cfg.dim)  # patch features -> the language model's width
        self.llm = Transformer(cfg)

    def prompt(self, features, questions):
        """Embeddings of `<s> USER: [video] question` (B, N, C), and where the video sits.

        features (B, T, Nv, P); questions: B word lists of one length."""
        B = features.shape[0]
        features = features.reshape(B, T * NV, P)  # (B, T*Nv, P), frame by frame
        prefix = torch.tensor([ID[w] for w in PREFIX]).expand(B, -1)  # (B, 2)
        text = torch.tensor([[ID[w] for w in q] for q in questions])  # (B, Nq)
        video = self.projector(features.to(self.projector.weight.dtype))  # (B, T*Nv, C)
        # Eq. 1: X = [X_v; X_q], after the prefix rows
        embeds = torch.cat([self.llm.embed(prefix), video, self.llm.embed(text)], dim=1)  # (B, N, C)
        return embeds, VideoSpan(len(PREFIX), T, NV)


def ask(model: ToyVideoLLM, sample: Sample, alpha=None, method=None, **generate_kwargs):
    """Answer one sample (two words), with all tokens (alpha and method None) or pruned: LLM-VTP keeping `alpha`
    (and `layer`, ...), or any generate.Method. Returns (the two words, Generation)."""
    from minivtp.generate import generate
    embeds, video = model.prompt(sample.features[None], [sample.question])
    if method is not None:
        out = generate(model.llm, embeds, 2, video=video, method=method, **generate_kwargs)
    elif alpha is not None:
        out = generate(model.llm, embeds, 2, video=video, alpha=alpha, **generate_kwargs)
    else:
        out = generate(model.llm, embeds, 2, **generate_kwargs)
    return [VOCAB[t] for t in out.tokens.tolist()], out


# ------------------------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def accuracy(model, n=300, seed=12345, kind=None, **generate_kwargs) -> float:
    g = torch.Generator().manual_seed(seed)
    right = 0
    for _ in range(n):
        s = make_sample(g, kind)
        right += is_right(s, ask(model, s, **generate_kwargs)[0])
    return right / n


def train(steps=6000, batch_size=32, lr=5e-3, seed=0, out=ASSETS, log_every=100, warmup=100, dim=64):
    """Teacher-forced on both answer words; the loss floor is about ln(objects) / 2, since the first word is
    any object in the video (about 0.55 when two to four objects are equally likely)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ToyVideoLLM(Config(**{**asdict(toy_config()), "dim": dim, "hidden_dim": 2 * dim}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    start = time.time()
    for step in range(1, steps + 1):
        # curriculum: one object per video first (find *the* object), then two, then two to four
        n_objects = 1 if step < 0.1 * steps else 2 if step < 0.2 * steps else None
        samples = [make_sample(g, None, n_objects) for _ in range(batch_size)]
        feats = torch.stack([s.features for s in samples])  # (B, T, Nv, P)
        # the prompt and the answer's first word, teacher-forced: the last two rows predict the two words
        embeds, _ = model.prompt(feats, [s.question + s.answer[:1] for s in samples])
        logits = model.llm.forward_embeds(embeds)[:, -2:]  # (B, 2, V)
        target = torch.tensor([[ID[w] for w in s.answer] for s in samples])  # (B, 2)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        for group in opt.param_groups:  # linear warm-up, then cosine decay to zero
            group["lr"] = lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step:5d}/{steps}  objects {n_objects or '2-4'}  loss {loss.item():.3f}  "
                  f"{time.time() - start:5.0f} s", flush=True)
    model.eval()
    acc = {k: accuracy(model, 200, kind=k) for k in KINDS}
    print("held-out accuracy: " + ", ".join(f"{k} {v:.3f} (chance {chance(k):.3f})" for k, v in acc.items()), flush=True)
    save(model, out, dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, accuracy=acc,
                          seconds=round(time.time() - start)))
    return model


def save(model, out: Path, info: dict):
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"projector.weight": model.projector.weight, "projector.bias": model.projector.bias}
    tensors.update({k: v for k, v in hf_names(model.llm).items()})
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"})
    cfg = model.llm.cfg
    config = dict(model_type="minivtp-toy", frames=T, tokens_per_frame=NV, patch_features=P, vocab=VOCAB,
                  prefix=PREFIX, text_config=dict(model_type="llama", vocab_size=cfg.vocab_size, hidden_size=cfg.dim,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_kv_heads, intermediate_size=cfg.hidden_dim, rms_norm_eps=cfg.norm_eps,
                  rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_seq_len, hidden_act="silu",
                  tie_word_embeddings=False), training=info)
    (out / "config.json").write_text(json.dumps(config, indent=1))


def hf_names(llm: Transformer) -> dict:
    """Our parameters under Hugging Face LLaMA names, so the toy checkpoint loads through the same mapping."""
    ours = dict(llm.named_parameters())
    return {hf: ours[checkpoint.hf_to_ours(hf)] for hf in checkpoint.hf_names(llm.cfg)}


def load(path=ASSETS, dtype=torch.float32, device="cpu", progress=None) -> "ToyVideoLLM":
    """The toy checkpoint in `path` (the shipped one by default), loaded as strictly as any other: the
    language model's tensors under Hugging Face LLaMA names, the projector under its own."""
    path, hf, files, index = checkpoint.open_checkpoint(path)
    if hf.get("model_type") != "minivtp-toy":
        raise checkpoint.CheckpointError(f"{path}: model_type {hf.get('model_type')!r} is not the minivtp toy")
    with torch.device("meta"):
        model = ToyVideoLLM(config_from_hf(hf["text_config"]))

    def rename(name):
        if name.startswith("projector."):
            return name
        ours = checkpoint.hf_to_ours(name)
        return None if ours is None else "llm." + ours

    info = checkpoint.load_into(model, files, rename, dtype, device, index, progress=progress)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()


def export_mvbench(out, n: int = 300, seed: int = 2024):
    """The held-out questions of `python -m minivtp experiments --n N --seed S` as an MVBench-format benchmark
    for `python -m minivtp eval`: out/questions.json and out/videos/<id>.safetensors (the patch features).

    Options are two-word answers: every right one (one per object, in the question's order) and wrong ones up
    to seven; `right_answers` lists the right ones, since the model may name any object that is there."""
    from safetensors.torch import save_file
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)  # the videos: the same stream as the experiments' held-out questions
    shuffle = torch.Generator().manual_seed(seed + 1)  # the options, drawn apart so the videos stay the same
    entries = []
    for i in range(n):
        s = make_sample(g)
        first = s.kind
        right = [f"{getattr(o, first)} {o.colour if first == 'shape' else o.shape}" for o in s.objects]
        names = SHAPES if first == "shape" else COLOURS
        others = COLOURS if first == "shape" else SHAPES
        wrong = [f"{a} {b}" for a in names for b in others if f"{a} {b}" not in right]
        pick = torch.randperm(len(wrong), generator=shuffle)[: 7 - len(right)].tolist()
        candidates = right + [wrong[j] for j in pick]
        order = torch.randperm(len(candidates), generator=shuffle).tolist()
        candidates = [candidates[j] for j in order]
        save_file({"features": s.features.contiguous()}, out / "videos" / f"{i:05d}.safetensors")
        entries.append(dict(id=f"{i:05d}", task_type=f"name a {s.kind}", video=f"{i:05d}.safetensors",
                            question=" ".join(s.question), candidates=candidates, answer=" ".join(s.answer),
                            right_answers=right))
    (out / "questions.json").write_text(json.dumps(entries, indent=1))
    return entries


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp toy")
    sub = p.add_subparsers(dest="cmd", required=True)
    x = sub.add_parser("export-mvbench", help="write held-out questions as a benchmark for python -m minivtp eval")
    x.add_argument("out", type=Path)
    x.add_argument("--n", type=int, default=300)
    x.add_argument("--seed", type=int, default=2024)
    t = sub.add_parser("train", help="train the toy video LLM and save it")
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=ASSETS)
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--dim", type=int, default=64)
    args = p.parse_args(argv)
    if args.cmd == "export-mvbench":
        export_mvbench(args.out, args.n, args.seed)
        print(f"wrote {args.n} questions to {args.out / 'questions.json'} and their videos to {args.out / 'videos'}: "
              f"python -m minivtp eval --weights {ASSETS} --questions {args.out / 'questions.json'} "
              f"--videos {args.out / 'videos'} --out results.jsonl")
        return 0
    train(steps=args.steps, seed=args.seed, out=args.out, lr=args.lr, dim=args.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
