"""The BLIP-2 / InstructBLIP Q-Former: Nq learned queries read one frame's vision rows and become Nq tokens.

What the Q-Former sees for one frame, rows of its own sequence (ST-LLM: Nq = 32, Lq the instruction's length):

    rows 0 .. Nq-1          queries      learned vectors; self-attention over every row, then cross-attention
                                         to the frame's 1 + P vision rows (every second layer), then their FFN
    rows Nq .. Nq+Lq-1      instruction  InstructBLIP only: the question's BERT tokens, [CLS] ... [SEP];
                                         self-attention only, their own FFN; they steer the queries, then go

and what it hands on: rows 0 .. Nq-1 of the last layer, (Nq, Cq), projected to the LLM's width. Frame by frame,
so a video of T frames gives T * Nq tokens, frame t's at rows t*Nq .. t*Nq + Nq - 1: LLM-VTP's frames are
these groups of Nq, and "top ceil(alpha * Nq) per frame" is per group. None of the Nq tokens is a [CLS]: the
queries are peers, none summarises the others (PruMerge+ ranks patches by the [CLS] row's attention).

A worked example of the queries' and the instruction's paths through one layer, with Nq = 2, Lq = 3:

    self-attention    5 x 5 scores, no mask (padding aside): queries read the instruction and it reads them
    cross-attention   the 2 query rows x (1 + P) vision rows          (only where layer % cross_every == 0)
    feed-forward      rows 0-1 through ffn_query, rows 2-4 through ffn_text: two sets of weights

Dimensions: Nq queries, Lq instruction tokens, Cq the Q-Former's width (768, BERT-base), Cv the vision width,
F frames (each its own batch row), P patches per frame.

The layer is BERT's, post-norm: x = LayerNorm(x + sublayer(x)) after each sublayer. Sources: LAVIS / ST-LLM
`stllm/models/Qformer.py` (`BertLayer.forward`: `query_length`, `crossattention`, `feed_forward_chunk_query`),
`stllm/models/st_llm.py` `encode_img` (the instruction fed with `attention_mask` ones for the queries);
transformers `InstructBlipVideoQFormerModel`.
"""

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass
class QFormerConfig:
    dim: int = 768  # Cq
    n_layers: int = 12
    n_heads: int = 12
    hidden_dim: int = 3072
    vocab_size: int = 30523  # bert-base-uncased's 30522 + LAVIS's "[DEC]"
    max_positions: int = 512
    eps: float = 1e-12
    cross_every: int = 2  # layers 0, 2, 4, ... read the frame
    vision_dim: int = 1408  # Cv, the keys' and values' input width in cross-attention
    n_query: int = 32  # Nq

    @classmethod
    def from_hf(cls, hf: dict, n_query: int, vision_dim: int) -> "QFormerConfig":
        """From transformers' InstructBlip(Video)QFormerConfig; Nq and Cv come from the outer config."""
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"qformer hidden_act {hf['hidden_act']!r}: the Q-Former uses exact 'gelu'")
        return cls(dim=hf.get("hidden_size", 768), n_layers=hf.get("num_hidden_layers", 12),
                   n_heads=hf.get("num_attention_heads", 12), hidden_dim=hf.get("intermediate_size", 3072),
                   vocab_size=hf.get("vocab_size", 30523), max_positions=hf.get("max_position_embeddings", 512),
                   eps=hf.get("layer_norm_eps", 1e-12), cross_every=hf.get("cross_attention_frequency", 2),
                   vision_dim=vision_dim, n_query=n_query)


class QFormerAttention(nn.Module):
    """q from the rows, k and v from `context` (themselves, or the vision rows); then LayerNorm(x + out(a))."""

    def __init__(self, dim: int, n_heads: int, kv_dim: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(kv_dim, dim), nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x, context):  # x (F, L, Cq), context (F, Lk, Ck) -> (F, L, Cq)
        q, k, v = (rearrange(w(t), "f l (h d) -> f h l d", h=self.n_heads)
                   for w, t in ((self.wq, x), (self.wk, context), (self.wv, context)))
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (F, H, L, Lk), no mask: one unpadded prompt
        a = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        return self.norm(x + self.out(rearrange(a @ v, "f h l d -> f l (h d)")))


class FeedForward(nn.Module):  # LayerNorm(x + fc2(gelu(fc1(x))))
    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x):
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig, index: int):
        super().__init__()
        self.self_attn = QFormerAttention(cfg.dim, cfg.n_heads, cfg.dim, cfg.eps)
        reads_frame = index % cfg.cross_every == 0
        self.cross_attn = QFormerAttention(cfg.dim, cfg.n_heads, cfg.vision_dim, cfg.eps) if reads_frame else None
        self.ffn_query = FeedForward(cfg.dim, cfg.hidden_dim, cfg.eps)
        self.ffn_text = FeedForward(cfg.dim, cfg.hidden_dim, cfg.eps)

    def forward(self, x, image, n_query: int):  # x (F, Nq+Lq, Cq), image (F, 1+P, Cv) -> (F, Nq+Lq, Cq)
        x = self.self_attn(x, x)
        queries, text = x[:, :n_query], x[:, n_query:]  # (F, Nq, Cq), (F, Lq, Cq)
        if self.cross_attn is not None:
            queries = self.cross_attn(queries, image)  # only the queries look at the frame
        return torch.cat([self.ffn_query(queries), self.ffn_text(text)], dim=1)


class QFormer(nn.Module):
    """(F, 1+P, Cv) vision rows and an instruction (1, Lq) or None -> (F, Nq, Cq) query outputs."""

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.query = nn.Parameter(torch.zeros(cfg.n_query, cfg.dim))  # (Nq, Cq)
        self.word = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Embedding(cfg.max_positions, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.layers = nn.ModuleList(QFormerLayer(cfg, i) for i in range(cfg.n_layers))

    def embed(self, frames: int, text_ids=None):  # -> (F, Nq+Lq, Cq), the input of layer 0
        x = self.query.expand(frames, -1, -1)  # (F, Nq, Cq): queries carry no position
        if text_ids is not None:
            if text_ids.dim() != 2 or text_ids.shape[0] != 1:
                raise ValueError(f"qformer_ids must be (1, Lq), got {tuple(text_ids.shape)}")
            Lq = text_ids.shape[1]
            if Lq > self.cfg.max_positions or int(text_ids.max()) >= self.cfg.vocab_size or int(text_ids.min()) < 0:
                raise ValueError(f"qformer_ids: {Lq} ids in 0..{int(text_ids.max())}; the Q-Former takes at most "
                                 f"{self.cfg.max_positions} ids in 0..{self.cfg.vocab_size - 1}")
            # subtle: the instruction's positions start at 0 after the queries, not at Nq: queries have none
            t = self.word(text_ids[0]) + self.pos.weight[:Lq]  # (Lq, Cq)
            x = torch.cat([x, t.to(x.dtype).expand(frames, -1, -1)], dim=1)  # (F, Nq+Lq, Cq)
        return self.norm(x)

    def forward(self, image, text_ids=None):
        x = self.embed(image.shape[0], text_ids)
        for layer in self.layers:
            x = layer(x, image, self.cfg.n_query)
        return x[:, : self.cfg.n_query]  # (F, Nq, Cq): the instruction rows are dropped


# --------------------------------------------------------------------------------------------------------------
# The Q-Former's own tokenizer: BERT's WordPiece (bert-base-uncased), not the LLM's


class WordPiece:
    """bert-base-uncased as BertTokenizer runs it: lower case, accents stripped, split at spaces and punctuation,
    then the longest vocabulary piece first, continuations marked "##"; [CLS] ... [SEP] around it.

        >>> wp = WordPiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "what", "is", "he", "do", "##ing", "?"])
        >>> wp.encode("What is he doing?")
        [2, 4, 5, 6, 7, 8, 9, 3]

    A word with no piece at some point becomes one [UNK], as BERT's does."""

    def __init__(self, vocab: list, max_chars: int = 100):
        self.vocab = {t: i for i, t in enumerate(vocab)}
        for t in ("[UNK]", "[CLS]", "[SEP]"):
            if t not in self.vocab:
                raise ValueError(f"a WordPiece vocabulary needs {t}")
        self.max_chars = max_chars

    @classmethod
    def from_dir(cls, path):
        """From `qformer_tokenizer/vocab.txt` (what transformers' InstructBlipVideoProcessor saves) or a
        `vocab.txt` given directly."""
        path = Path(path)
        f = path if path.is_file() else path / "qformer_tokenizer" / "vocab.txt"
        if not f.is_file():
            raise ValueError(f"{path}: no qformer_tokenizer/vocab.txt: the Q-Former reads the question with BERT's "
                             "WordPiece vocabulary (bert-base-uncased's vocab.txt; save_pretrained of an "
                             "InstructBlipVideoProcessor writes it there)")
        return cls(f.read_text(encoding="utf-8").splitlines())

    def words(self, text: str) -> list:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn" and not is_control(c))
        out, word = [], ""
        for c in text:
            if c.isspace():
                out, word = out + ([word] if word else []), ""
            elif is_punctuation(c) or is_cjk(c):
                out, word = out + ([word] if word else []) + [c], ""
            else:
                word += c
        return out + ([word] if word else [])

    def pieces(self, word: str) -> list:
        if len(word) > self.max_chars:
            return [self.vocab["[UNK]"]]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = ("##" if start else "") + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return [self.vocab["[UNK]"]]
            ids.append(self.vocab[piece])
            start = end
        return ids

    def encode(self, text: str) -> list:
        ids = [self.vocab["[CLS]"]]
        for w in self.words(text):
            ids += self.pieces(w)
        return ids + [self.vocab["[SEP]"]]


def is_punctuation(c: str) -> bool:  # BERT's: every ASCII non-alphanumeric symbol, and Unicode's P* classes
    o = ord(c)
    return 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126 or unicodedata.category(c).startswith("P")


def is_control(c: str) -> bool:
    return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf") or ord(c) in (0, 0xFFFD)


def is_cjk(c: str) -> bool:  # BERT puts spaces around every CJK ideograph
    o = ord(c)
    return any(a <= o <= b for a, b in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))
