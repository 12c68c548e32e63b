"""The LLaMA / Vicuna tokenizer from scratch: SentencePiece-style BPE read from a checkpoint's tokenizer.json.

    tok = Tokenizer.from_file("pllava-7b/tokenizer.json")
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


class Tokenizer:
    def __init__(self, vocab: dict, merges: list, added: dict, special: set, prepend="every", bos=None, eos=None,
                 byte_fallback=True, unk=None):
        self.vocab = vocab  # token string -> id
        self.inverse = {i: t for t, i in vocab.items()}
        self.inverse.update({i: t for t, i in added.items()})
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}  # (left, right) -> rank
        self.added = added  # token string -> id, matched in raw text
        self.special = special  # ids that decode(skip_special=True) drops
        self.prepend = prepend  # "normalizer": every piece; Metaspace: "always", "first" piece only, or "never"
        self.bos, self.eos, self.byte_fallback, self.unk = bos, eos, byte_fallback, unk
        self.by_length = sorted(added, key=len, reverse=True)

    @classmethod
    def from_file(cls, path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{path}: no tokenizer.json (minivtp reads the fast-tokenizer file, not tokenizer.model)")
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
        symbols = []
        for ch in piece:  # step 3: characters, or their bytes when the vocabulary lacks them
            if ch in self.vocab:
                symbols.append(ch)
            elif self.byte_fallback:
                symbols += [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
            else:
                symbols.append(self.unk)
        while len(symbols) > 1:  # step 4: the best-ranked adjacent pair, leftmost first
            ranks = [self.ranks.get(pair, float("inf")) for pair in zip(symbols, symbols[1:])]
            best = min(ranks)
            if best == float("inf"):
                break
            i = ranks.index(best)
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def encode(self, text: str, bos: bool = True) -> list:
        ids = [self.bos] if bos and self.bos is not None else []
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
            m = BYTE.fullmatch(tok)
            out += bytes([int(m.group(1), 16)]) if m else tok.replace(SPACE, " ").encode("utf-8")
        text = out.decode("utf-8", errors="replace")
        if self.prepend != "never" and text.startswith(" "):
            text = text[1:]  # the "▁" that encoding put in front
        return text
