"""Eight "frames" of text and a question: where does a real model's question attention go, layer by layer?

LLM-VTP rests on one observation (Sec. 3 of the paper): at a middle layer M, the attention from the question rows
to the video columns points at the tokens the answer needs. A text-only model lets us look at the same rows with
a prompt whose right answer we know. Each frame is one sentence; the question asks which frame shows one thing:

    rows:  0             1 2       3 ...                ...   ...                   ... N-1
           <|im_start|>  user \\n  Frame 1: a man       ...   Frame 8: a chef       Which frame shows the soup?
                                   slices tomatoes ... .\\n     pours soup ... .\\n  <|im_end|>\\n<|im_start|>
                                                                                   assistant\\nFrame_ (_: a space)
           first token   prefix    frame 1              ...   frame 8               question rows (as LLM-VTP
                                                                                   counts them: all after the frames)

The assistant's turn is begun with "Frame " (SmolLM2 writes every digit as its own token, after a "Ġ" of its
own), so the model's next token is its answer: a digit.

For every layer, the question rows' attention (the mean over heads and over question rows, so it sums to 1) is
split into: the first token, the punctuation and line breaks inside the frames (":", ".", "\\n"), the other words of
the frame that holds the answer, those of an average other frame, and the question rows themselves. A layer
"finds" the frame when that frame's words get the most attention per token of all eight (a_v of Eq. 4, averaged
per frame); "picks most" is the frame a layer gives the most attention per token most often, over the eight
questions. `look` does this for eight questions, one per frame, and `report` prints the table:

    python -m minivtp text-frames --weights "$(python -m minivtp smollm2)"
"""

import sys

import torch

from minivtp import vtp
from minivtp.hosts.prompts import chat_prompt

FRAMES = ["a man slices tomatoes in a kitchen", "a dog chases a ball on the beach", "two children paint a fence red",
          "a woman reads a book on a train", "a cat sleeps on a warm car roof", "an old man feeds pigeons in a park",
          "a girl rides a bicycle up a hill", "a chef pours soup into a bowl"]
THINGS = ["tomatoes", "dog", "fence", "book", "cat", "pigeons", "bicycle", "soup"]  # THINGS[i] is only in FRAMES[i]
PUNCTUATION = set(":.,\n ")


def frames_prompt(tok, target: int):
    """(ids, rows) for the question about FRAMES[target]: rows["frames"][i] is frame i's token rows, rows["punct"]
    the rows among them that are only punctuation or space, rows["question"] the rows after the last frame."""
    head, tail = chat_prompt("\0", chatml=True).split("\0")  # the template around the user's message
    pieces = [("prefix", head)]
    for i, frame in enumerate(FRAMES):
        pieces += [(i, f"Frame {i + 1}: {frame}."), (i, "\n")]
    pieces += [("question", f"Which frame shows the {THINGS[target]}?{tail}Frame ")]
    ids, rows = [], {"frames": [[] for _ in FRAMES], "punct": [], "question": []}
    for kind, text in pieces:  # encoded piece by piece to know the rows; the test checks it equals the whole
        piece = tok.encode(text, bos=False)
        span = list(range(len(ids), len(ids) + len(piece)))
        if kind == "question":
            rows["question"] = span
        elif kind != "prefix":
            rows["frames"][kind] += span
            rows["punct"] += [r for r, t in zip(span, piece) if set(tok.decode([t])) <= PUNCTUATION]
        ids += piece
    return ids, rows


@torch.no_grad()
def question_attention(model, ids: list, question_rows: list):
    """One unpruned prefill: per layer, the question rows' attention over all N rows, the mean over heads and
    question rows, (L, N) float32 with rows that sum to 1; and the logits of the next token, (V,)."""
    N = len(ids)
    pos = torch.arange(N)
    cos, sin = model.rope(pos)
    caches = model.new_caches(1, N)
    q = torch.tensor(question_rows)
    x = model.embed(torch.tensor([ids]))  # (1, N, C)
    out = []
    for block, cache in zip(model.layers, caches):
        x_in = x
        x = block(x, cos, sin, pos, cache)
        A = vtp.layer_attention(block, x_in, cos, sin, pos, cache, q)  # (H, Nq, N)
        out.append(A.mean(dim=(0, 1)))  # (N,)
    return torch.stack(out), model.head(x[:, -1])[0]  # (L, N), (V,)


def shares(p: torch.Tensor, rows: dict, target: int) -> dict:
    """Where one layer's attention p (N,) goes, and which frame gets the most per token."""
    punct = set(rows["punct"])
    words = [[r for r in f if r not in punct] for f in rows["frames"]]
    mass = torch.stack([p[w].sum() for w in words])  # (8,)
    per_token = mass / torch.tensor([len(w) for w in words])
    return dict(first=p[0].item(), punct=p[sorted(punct)].sum().item(), question=p[rows["question"]].sum().item(),
                answer=mass[target].item(), other=(mass.sum() - mass[target]).item() / (len(words) - 1),
                top=int(per_token.argmax()))


def look(model, tok, attention=question_attention) -> dict:
    """Eight questions, one per frame: per layer the mean shares over the questions, how many questions' frame the
    layer finds, and the model's answers (its greedy next token after "Frame "). `attention(model, ids, rows)`
    is question_attention, or an oracle's twin of it."""
    per_question, answers, n = [], [], len(FRAMES)
    for target in range(n):
        ids, rows = frames_prompt(tok, target)
        P, logits = attention(model, ids, rows["question"])  # (L, N), (V,)
        answers.append(tok.decode([int(logits.argmax())]).strip())
        per_question.append([shares(p, rows, target) for p in P])
    table = []
    for layer in zip(*per_question):  # the eight questions' shares at one layer
        row = {k: sum(q[k] for q in layer) / n for k in ("first", "punct", "question", "answer", "other")}
        tops = [q["top"] for q in layer]
        row["found"] = sum(top == target for target, top in enumerate(tops))
        row["top"] = max(range(n), key=lambda f: (tops.count(f), -f))  # the frame it picks most often
        row["top_count"] = tops.count(row["top"])
        table.append(row)
    return dict(layers=table, answers=answers, right=sum(a == str(i + 1) for i, a in enumerate(answers)))


def report(result: dict) -> str:
    """The table: one line per layer, shares of the question rows' attention in percent (means of 8 questions)."""
    lines = ["layer  first token  punctuation  question  answer frame  other frame  finds the frame  picks most",
             "-----  -----------  -----------  --------  ------------  -----------  ---------------  ----------"]
    for i, r in enumerate(result["layers"], 1):
        lines.append(f"{i:5d}  {100 * r['first']:10.1f}%  {100 * r['punct']:10.1f}%  {100 * r['question']:7.1f}%  "
                     f"{100 * r['answer']:11.1f}%  {100 * r['other']:10.1f}%  {r['found']:>11d} of 8  "
                     f"{r['top'] + 1:>3d} ({r['top_count']} of 8)")
    lines.append(f"answers {' '.join(result['answers'])} (right: {result['right']} of 8; the frames are 1 to 8)")
    return "\n".join(lines)


def main(argv=None):
    import argparse

    import weights
    from minivtp.tokenizer import Tokenizer
    p = argparse.ArgumentParser(prog="python -m minivtp text-frames", description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a LLaMA checkpoint whose tokenizer has ChatML (SmolLM2)")
    args = p.parse_args(argv)
    try:
        tok = Tokenizer.from_file(args.weights)
        if "<|im_start|>" not in tok.added:
            raise ValueError(f"{args.weights}: the tokenizer has no <|im_start|>; the prompt is ChatML")
        print(report(look(weights.load(args.weights), tok)))
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
