"""The LLaMA / Vicuna tokenizer from scratch: SentencePiece-style BPE read from a checkpoint's tokenizer.json,
or from its SentencePiece tokenizer.model (a protobuf file, read here with a ten-line varint reader).

    tok = Tokenizer.from_file("pllava-7b/tokenizer.json")     # a directory works too: tokenizer.json, else .model
    tok.encode("USER: <image>\\nWhat is he doing?")      # [1, 3148, 1001, 29901, 29871, 32000, ...]
    tok.decode(ids)

How LLaMA tokenizes, in the order it happens:
1. Added tokens (`<s>`, `</s>`, `<image>`, ...) are cut out of the text first, matched literally.
2. Each remaining piece is normalised: spaces become "▁" (U+2581), and a "▁" is put in front, so " cat" and
   "cat" at the start of a text look alike. (Old "legacy" files prepend to every piece; newer ones, with a
   Metaspace pre-tokenizer, only to the piece at the very start of the text.)
3. The piece is split into characters; a character that is not in the vocabulary becomes its UTF-8 bytes,
   as the tokens <0xE2> <0x96> ... ("byte fallback"): nothing is ever unknown.
4. BPE: repeatedly merge the adjacent pair with the best (lowest) rank in the merge list, until none applies.
"""

import re
from pathlib import Path

from weights import read_json

SPACE = "\u2581"  # ▁
BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
UNK_SURFACE = " \u2047 "  # SentencePiece's unk_surface default, " ⁇ "


class Tokenizer:
    def __init__(self, vocab: dict, merges: list, added: dict, special: set, prepend="every", bos=None, eos=None,
                 byte_fallback=True, unk=None, scores: dict = None, collapse_spaces=False):
        self.vocab = vocab  # token string -> id
        self.inverse = {i: t for t, i in vocab.items()}
        self.inverse.update({i: t for t, i in added.items()})
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}  # (left, right) -> rank
        self.added = added  # token string -> id, matched in raw text
        self.special = special  # ids that decode(skip_special=True) drops
        self.prepend = prepend  # "normalizer": every piece; Metaspace: "always", "first" piece only, or "never"
        self.bos, self.eos, self.byte_fallback, self.unk = bos, eos, byte_fallback, unk
        self.by_length = sorted(added, key=len, reverse=True)
        # tokenizer.model: no merge list; a pair merges when the joined piece is in the vocabulary, best score first
        self.scores = scores
        self.collapse_spaces = collapse_spaces  # SentencePiece's remove_extra_whitespaces

    @classmethod
    def from_file(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "tokenizer.model"
        if path.suffix == ".model":
            return cls.from_sentencepiece(path)
        if not path.is_file():
            raise ValueError(f"{path}: no tokenizer.json or tokenizer.model")
        d = read_json(path)
        model = d.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: model type {model.get('type')!r} is not BPE (not a LLaMA tokenizer)")
        if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
            raise ValueError(f"{path}: a BPE model needs a 'vocab' object and a 'merges' list")
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        added = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
        special = {t["id"] for t in d.get("added_tokens", []) if t.get("special")}
        # where "▁" is prepended: a Prepend normaliser (every piece) or a Metaspace pre-tokenizer (its scheme)
        prepend = "never"
        norms = (d.get("normalizer") or {})
        for n in norms.get("normalizers", [norms]):
            if n and n.get("type") == "Prepend":
                prepend = "normalizer"
        pre = d.get("pre_tokenizer") or {}
        for p in pre.get("pretokenizers", [pre]):
            if p and p.get("type") == "Metaspace":
                scheme = p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never")
                prepend = scheme
                if p.get("split", False):
                    raise ValueError(f"{path}: a Metaspace pre-tokenizer that splits words is not LLaMA's")
        bos = eos = None
        post = d.get("post_processor") or {}
        for step in post.get("single", []):  # TemplateProcessing: which special token goes first
            if "SpecialToken" in step and step is post["single"][0]:
                bos = added.get(step["SpecialToken"]["id"], model["vocab"].get(step["SpecialToken"]["id"]))
        eos = added.get("</s>", model["vocab"].get("</s>"))
        return cls(model["vocab"], merges, added, special, prepend, bos, eos, model.get("byte_fallback", False),
                   model.get("unk_token"))

    @classmethod
    def from_sentencepiece(cls, path):
        """A SentencePiece BPE model file (LLaMA's tokenizer.model)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such tokenizer.model")
        try:
            model = read_sentencepiece(path.read_bytes())
        except (IndexError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a SentencePiece model file ({e})") from None
        if not model["pieces"]:
            raise ValueError(f"{path}: not a SentencePiece model file (no pieces)")
        if model["model_type"] != 2:
            kind = {1: "unigram", 3: "word", 4: "char"}.get(model["model_type"], str(model["model_type"]))
            raise ValueError(f"{path}: a SentencePiece {kind} model; minivtp reads BPE models (LLaMA's kind)")
        if model["normalizer"] not in ("identity", ""):
            raise ValueError(f"{path}: normaliser {model['normalizer']!r}; minivtp implements 'identity' (LLaMA's), "
                             "not NFKC")
        vocab, scores, added, special, unk = {}, {}, {}, set(), None
        for i, (piece, score, kind) in enumerate(model["pieces"]):
            vocab[piece] = i
            if kind in (NORMAL, USER_DEFINED):
                scores[piece] = score
            if kind == USER_DEFINED:  # matched whole in the text, like added tokens
                added[piece] = i
            elif kind == CONTROL:
                special.add(i)
            elif kind == UNKNOWN:
                unk = piece
        inverse = {i: p for p, i in vocab.items()}
        bos, eos = model["bos_id"], model["eos_id"]
        return cls(vocab, [], added, special, "first" if model["add_dummy_prefix"] else "never",
                   bos if bos in inverse else None, eos if eos in inverse else None, model["byte_fallback"], unk,
                   scores=scores, collapse_spaces=model["remove_extra_whitespaces"])

    # -- encoding ------------------------------------------------------------------------------------------

    def split_added(self, text):
        """[(piece, is_added)]: added tokens cut out, longest match first."""
        out, start, i = [], 0, 0
        while i < len(text):
            hit = next((t for t in self.by_length if text.startswith(t, i)), None)
            if hit is None:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], False))
            out.append((hit, True))
            i = start = i + len(hit)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def bpe(self, piece: str) -> list:
        """One normalised piece -> token strings."""
        symbols, unknown = [], False
        for ch in piece:  # step 3: characters, or their bytes when the vocabulary lacks them
            if ch in self.vocab:
                symbols.append(ch)
            elif self.byte_fallback:
                symbols += [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
            elif unknown:  # without bytes to fall back on, a run of unknown characters is one <unk>
                symbols[-1] += ch
            else:
                symbols.append(ch)
            unknown = ch not in self.vocab and not self.byte_fallback
        while len(symbols) > 1:  # step 4: the best-ranked adjacent pair, leftmost first
            ranks = [self.rank(a, b) for a, b in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == float("inf"):
                break
            i = ranks.index(best)
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def rank(self, a: str, b: str) -> float:
        if self.scores is None:  # tokenizer.json: the merge list's order
            return self.ranks.get((a, b), float("inf"))
        score = self.scores.get(a + b)  # tokenizer.model: the joined piece's score, the higher the sooner
        return float("inf") if score is None else -score

    def encode(self, text: str, bos: bool = True) -> list:
        ids = [self.bos] if bos and self.bos is not None else []
        if self.scores is not None:  # SentencePiece: normalise the whole text, then cut out user-defined pieces
            if self.collapse_spaces:  # leading, trailing and repeated spaces go
                text = re.sub(" +", " ", text).strip(" ")
            text = text.replace(" ", SPACE)
            if text and self.prepend == "first":
                text = SPACE + text  # the dummy prefix, once, before anything else
            for piece, is_added in self.split_added(text):
                ids += [self.added[piece]] if is_added else [self.vocab.get(t, self.vocab.get(self.unk))
                                                              for t in self.bpe(piece)]
            return ids
        for n, (piece, is_added) in enumerate(self.split_added(text)):
            if is_added:
                ids.append(self.added[piece])
                continue
            piece = piece.replace(" ", SPACE)  # step 2
            # subtle: the Prepend normaliser adds "▁" to every piece, even one that starts with a space; the
            # Metaspace pre-tokenizer adds it only where the piece does not start with "▁" already
            metaspace = self.prepend == "always" or (self.prepend == "first" and n == 0)
            if self.prepend == "normalizer" or (metaspace and not piece.startswith(SPACE)):
                piece = SPACE + piece
            ids += [self.vocab.get(t, self.vocab.get(self.unk)) for t in self.bpe(piece)]
        return ids

    # -- decoding ------------------------------------------------------------------------------------------

    def decode(self, ids, skip_special: bool = False) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if skip_special and i in self.special:
                continue
            tok = self.inverse[i]
            if self.scores is not None and tok == self.unk:
                tok = UNK_SURFACE  # what SentencePiece prints for <unk>
            m = BYTE.fullmatch(tok)
            out += bytes([int(m.group(1), 16)]) if m else tok.replace(SPACE, " ").encode("utf-8")
        text = out.decode("utf-8", errors="replace")
        if self.prepend != "never" and text.startswith(" "):
            text = text[1:]  # the "▁" that encoding put in front
        return text


# ------------------------------------------------------------------------------------------------------------
# tokenizer.model: SentencePiece's ModelProto, read field by field (no protobuf package)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE_PIECE = 1, 2, 3, 4, 5, 6  # SentencePiece.Type


def protobuf_fields(data: bytes):
    """(field number, wire type, value) for each field of one message: ints for varints, bytes otherwise."""
    i = 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7

    while i < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            yield field, wire, data[i : i + 8]
            i += 8
        elif wire == 2:
            n = varint()
            if i + n > len(data):
                raise ValueError("a field runs past the end of the file")
            yield field, wire, data[i : i + n]
            i += n
        elif wire == 5:
            yield field, wire, data[i : i + 4]
            i += 4
        else:
            raise ValueError(f"wire type {wire} is not protobuf's")


def read_sentencepiece(data: bytes) -> dict:
    """The fields of ModelProto that encoding needs (sentencepiece_model.proto, with its defaults)."""
    import struct
    out = dict(pieces=[], model_type=1, byte_fallback=False, unk_id=0, bos_id=1, eos_id=2, normalizer="",
               add_dummy_prefix=True, remove_extra_whitespaces=True)
    for field, _, value in protobuf_fields(data):
        if field == 1:  # repeated SentencePiece {piece = 1, score = 2, type = 3}
            piece, score, kind = "", 0.0, NORMAL
            for f, _, v in protobuf_fields(value):
                if f == 1:
                    piece = v.decode("utf-8")
                elif f == 2:
                    score = struct.unpack("<f", v)[0]
                elif f == 3:
                    kind = v
            out["pieces"].append((piece, score, kind))
        elif field == 2:  # TrainerSpec
            for f, _, v in protobuf_fields(value):
                name = {3: "model_type", 35: "byte_fallback", 40: "unk_id", 41: "bos_id", 42: "eos_id"}.get(f)
                if name:
                    out[name] = bool(v) if name == "byte_fallback" else v - (1 << 64) * (v >= 1 << 63)
        elif field == 3:  # NormalizerSpec
            for f, _, v in protobuf_fields(value):
                if f == 1:
                    out["normalizer"] = v.decode("utf-8")
                elif f == 3:
                    out["add_dummy_prefix"] = bool(v)
                elif f == 4:
                    out["remove_extra_whitespaces"] = bool(v)
    return out
