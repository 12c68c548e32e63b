"""A toy video LLM that a laptop can train, so LLM-VTP's claim can be seen without a 7B model.

The task. A "video" is T=8 frames of a 3x3 grid of patches (Nv=9, 72 video tokens). Four objects, one of each
shape and one of each colour, sit in random frames at random cells; every other patch is background clutter.
A question asks about one object, so its answer lives in one of the 72 patches:

    colour of triangle   -> red       (find the triangle, read its colour)
    shape of blue        -> star      (find the blue object, read its shape)
    frame of circle      -> 5         (find the circle, read when it appears)

Shapes and colours are dealt at random, so nothing but the video tells the answer.

The model. A patch's features (shape and colour channels, frame and cell one-hots, an objectness channel,
clutter noise) go through one linear projector to the width of `minivtp.model.Transformer`, used unchanged
as the language model. The question's last row answers:

    <s> USER: [8 x 9 video rows] colour of triangle   ->  red

    OMP_NUM_THREADS=1 python -m minivtp.toy train     # how the shipped weights were made: 27 minutes;
                                                      # writes minivtp/assets/toy/

Training uses a curriculum: one object per video for the first quarter of the steps (find *the* object),
two for the second, then four. Without it the model sits at chance for thousands of steps.
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

import weights
from minivtp.model import Config, Transformer
from minivtp.vtp import VideoSpan

T, ROWS, COLS = 8, 3, 3
NV = ROWS * COLS
SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = ["red", "green", "blue", "yellow"]
DIGITS = [str(i) for i in range(T)]
WORDS = ["<pad>", "<s>", "</s>", "USER:", "colour", "shape", "frame", "of"]
VOCAB = WORDS + SHAPES + COLOURS + DIGITS
ID = {w: i for i, w in enumerate(VOCAB)}
PREFIX = ["<s>", "USER:"]  # the rows before the video
N_NOISE = 8
P = len(SHAPES) + len(COLOURS) + T + ROWS + COLS + 1 + N_NOISE  # patch feature size (1: objectness)
KINDS = ("colour", "shape", "frame")
ASSETS = Path(__file__).parent / "assets" / "toy"


@dataclass
class Object:
    shape: str
    colour: str
    frame: int
    row: int
    col: int


@dataclass
class Sample:
    features: torch.Tensor  # (T, Nv, P)
    objects: list
    question: list  # words; the last one names the object
    answer: str


def patch_features(objects, g: torch.Generator) -> torch.Tensor:
    """(T, Nv, P): background clutter everywhere, then the objects drawn in."""
    f = torch.zeros(T, ROWS, COLS, P)
    s, c, fr, r, co = 0, len(SHAPES), len(SHAPES) + len(COLOURS), len(SHAPES) + len(COLOURS) + T, len(SHAPES) + len(COLOURS) + T + ROWS
    # clutter: faint random shape and colour evidence, and pure noise channels
    f[..., s : s + len(SHAPES) + len(COLOURS)] = 0.1 * torch.rand(T, ROWS, COLS, len(SHAPES) + len(COLOURS), generator=g)
    f[..., -N_NOISE:] = 0.2 * torch.randn(T, ROWS, COLS, N_NOISE, generator=g)
    # where every patch is: its frame, row and column (a real video LLM gets these from RoPE and the encoder)
    f[..., fr : fr + T] += torch.eye(T)[:, None, None, :]
    f[..., r : r + ROWS] += torch.eye(ROWS)[None, :, None, :]
    f[..., co : co + COLS] += torch.eye(COLS)[None, None, :, :]
    for o in objects:
        cell = f[o.frame, o.row, o.col]
        cell[s : s + len(SHAPES) + len(COLOURS)] = 0
        cell[s + SHAPES.index(o.shape)] = 1.0
        cell[c + COLOURS.index(o.colour)] = 1.0
        cell[-N_NOISE - 1] = 1.0  # objectness: something is here (a vision encoder's saliency, in one channel)
    return f.reshape(T, NV, P)


def make_sample(g: torch.Generator, kind: str = None, n_objects: int = 4) -> Sample:
    """One video and one question about it. `kind` is one of KINDS, or None for a random one. Fewer objects
    than 4 only in the first steps of training (a curriculum)."""
    pick = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
    kind = kind or KINDS[pick(len(KINDS))]
    shapes = [SHAPES[i] for i in torch.randperm(len(SHAPES), generator=g).tolist()]
    colours = [COLOURS[i] for i in torch.randperm(len(COLOURS), generator=g).tolist()]
    objects, taken = [], set()
    for shape, colour in list(zip(shapes, colours))[:n_objects]:
        while (where := (pick(T), pick(ROWS), pick(COLS))) in taken:
            pass
        taken.add(where)
        objects.append(Object(shape, colour, *where))
    target = objects[0]
    if kind == "colour":
        question, answer = ["colour", "of", target.shape], target.colour
    elif kind == "shape":
        question, answer = ["shape", "of", target.colour], target.shape
    else:
        question, answer = ["frame", "of", target.shape], str(target.frame)
    return Sample(patch_features(objects, g), objects, question, answer)


def chance(kind: str) -> float:
    return {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "frame": 1 / T}[kind]


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

        features (B, T, Nv, P); questions: B word lists of one length (one question kind per batch)."""
        B = features.shape[0]
        features = features.reshape(B, T * NV, P)  # (B, T*Nv, P), frame by frame
        prefix = torch.tensor([ID[w] for w in PREFIX]).expand(B, -1)  # (B, 2)
        text = torch.tensor([[ID[w] for w in q] for q in questions])  # (B, Nq)
        video = self.projector(features.to(self.projector.weight.dtype))  # (B, T*Nv, C)
        # Eq. 1: X = [X_v; X_q], after the prefix rows
        embeds = torch.cat([self.llm.embed(prefix), video, self.llm.embed(text)], dim=1)  # (B, N, C)
        return embeds, VideoSpan(len(PREFIX), T, NV)


def ask(model: ToyVideoLLM, sample: Sample, alpha=None, **generate_kwargs):
    """Answer one sample, with all tokens (alpha=None) or with LLM-VTP keeping `alpha` (and `layer`, ...).
    Prefill only: the answer is one token. Returns (answer word, Generation)."""
    from minivtp.generate import generate
    embeds, video = model.prompt(sample.features[None], [sample.question])
    if alpha is None:
        out = generate(model.llm, embeds, 1, **generate_kwargs)
    else:
        out = generate(model.llm, embeds, 1, video=video, alpha=alpha, **generate_kwargs)
    return VOCAB[out.tokens[0]], out


# ------------------------------------------------------------------------------------------------------------
# Training


def batch(g, size, kind=None, n_objects=4):
    samples = [make_sample(g, kind, n_objects) for _ in range(size)]
    feats = torch.stack([s.features for s in samples])  # (B, T, Nv, P)
    return samples, feats


@torch.no_grad()
def accuracy(model, n=300, seed=12345, kind=None, **generate_kwargs) -> float:
    g = torch.Generator().manual_seed(seed)
    right = 0
    for _ in range(n):
        s = make_sample(g, kind)
        right += ask(model, s, **generate_kwargs)[0] == s.answer
    return right / n


def train(steps=6000, batch_size=32, lr=5e-3, seed=0, out=ASSETS, log_every=100, warmup=100, dim=64):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ToyVideoLLM(Config(**{**asdict(toy_config()), "dim": dim, "hidden_dim": 2 * dim}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    start = time.time()
    for step in range(1, steps + 1):
        kind = KINDS[step % len(KINDS)]  # one question kind per batch, so the prompt length is shared
        # curriculum: one object per video first (find *the* object), then two, then the full four
        n_objects = 1 if step < 0.25 * steps else 2 if step < 0.5 * steps else 4
        samples, feats = batch(g, batch_size, kind, n_objects)
        embeds, _ = model.prompt(feats, [s.question for s in samples])
        logits = model.llm.forward_embeds(embeds)[:, -1]  # (B, V): the question's last row answers
        target = torch.tensor([ID[s.answer] for s in samples])
        loss = F.cross_entropy(logits, target)
        for group in opt.param_groups:  # linear warm-up, then cosine decay to zero
            group["lr"] = lr * min(1.0, step / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step:5d}/{steps}  {kind:6s} objects {n_objects}  loss {loss.item():.3f}  "
                  f"{time.time() - start:5.0f} s", flush=True)
    model.eval()
    acc = {k: accuracy(model, 200, kind=k) for k in KINDS}
    print("held-out accuracy: " + ", ".join(f"{k} {v:.3f} (chance {chance(k):.3f})" for k, v in acc.items()), flush=True)
    save(model, out, dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, accuracy=acc))
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
    return {hf: ours[weights.hf_to_ours(hf)] for hf in weights.hf_names(llm.cfg)}


def load(path=ASSETS, dtype=torch.float32, device="cpu", progress=None) -> "ToyVideoLLM":
    """The toy checkpoint in `path` (the shipped one by default), loaded as strictly as any other: the
    language model's tensors under Hugging Face LLaMA names, the projector under its own."""
    path, hf, files, index = weights.open_checkpoint(path)
    if hf.get("model_type") != "minivtp-toy":
        raise weights.CheckpointError(f"{path}: model_type {hf.get('model_type')!r} is not the minivtp toy")
    with torch.device("meta"):
        model = ToyVideoLLM(Config.from_hf(hf["text_config"]))

    def rename(name):
        if name.startswith("projector."):
            return name
        ours = weights.hf_to_ours(name)
        return None if ours is None else "llm." + ours

    info = weights.load_into(model, files, rename, dtype, device, index, progress=progress)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minivtp.toy")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the toy video LLM and save it")
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=ASSETS)
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--dim", type=int, default=64)
    args = p.parse_args(argv)
    train(steps=args.steps, seed=args.seed, out=args.out, lr=args.lr, dim=args.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
