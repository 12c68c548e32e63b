"""Two tokenizer families from scratch, read from a checkpoint's tokenizer.json (or LLaMA's tokenizer.model):
SentencePiece-style BPE (LLaMA-2, Vicuna, PLLaVA, Tarsier) and byte-level BPE (GPT-2, LLaMA-3, Qwen2, SmolLM2).

    tok = Tokenizer.from_file("pllava-7b")          # a directory: tokenizer.json, else tokenizer.model
    tok.encode("USER: <image>\\nWhat is he doing?")   # [1, 3148, 1001, 29901, 29871, 32000, ...]
    tok.decode(ids)
    tok.byte_level                                  # False here; True for SmolLM2's tokenizer.json

Both are BPE: the same merge loop (`bpe`) runs over both. They differ in what the loop starts from.

  step                SentencePiece-style (LLaMA-2)            byte-level (GPT-2, LLaMA-3, SmolLM2)
  1. added tokens     `<s>`, `<image>` cut out of the raw text first, matched literally   (the same)
  2. pre-tokenize     " " -> "▁" (U+2581), a "▁" put in front;     a regex cuts the text into words, numbers,
                      the text stays one piece                    punctuation runs and space runs
  3. symbols          characters; one not in the vocabulary       every UTF-8 byte, written as one printable
                      becomes its bytes <0xE2> <0x96> ...         stand-in character (`bytes_to_unicode`):
                      ("byte fallback")                           " " is "Ġ", "\\n" is "Ċ"
  4. merge            the adjacent pair with the best (lowest) rank in the merge list, until none applies
  5. decode           "▁" -> " ", <0x..> -> that byte             each stand-in -> its byte; then UTF-8

Worked example (SmolLM2's file): "Hello world" is cut into "Hello" and " world"; " world" is the bytes
20 77 6F 72 6C 64, written "Ġworld"; the merges join it back to one token, id 905. The SentencePiece family
would instead see "▁Hello▁world", one piece, and merge across the space.

(Old SentencePiece "legacy" files prepend "▁" to every piece between added tokens; newer ones, with a Metaspace
pre-tokenizer, only to the piece at the very start of the text.) A tokenizer.json feature that is not
implemented here (a model type, a normaliser, a pre-tokenizer, a decoder) is refused with a ValueError that
names it: never a wrong id.
"""

import re
import unicodedata
from pathlib import Path

from minivtp.checkpoint import read_json

SPACE = "\u2581"  # ▁
BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
UNK_SURFACE = " \u2047 "  # SentencePiece's unk_surface default, " ⁇ "
# the split that a ByteLevel pre-tokenizer with use_regex=true makes (GPT-2's, kept in the tokenizers library):
# contractions, an optional space + a run of letters, of numbers or of other symbols, then space runs
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPLIT_BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")


def bytes_to_unicode() -> dict:
    """GPT-2's table: byte value -> one printable character that stands for it in the vocabulary.

    The 188 bytes that print as themselves in Latin-1 keep their own character; the other 68 (controls, space,
    DEL, the non-breaking space, the soft hyphen) get chr(256 + n) in byte order, so every byte string is a
    string of visible characters and a BPE over characters is a BPE over bytes:

        >>> table = bytes_to_unicode()
        >>> table[ord("a")], table[ord(" ")], table[ord("\\n")], "".join(table[b] for b in "é".encode())
        ('a', 'Ġ', 'Ċ', 'Ã©')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def unicode_regex():
    """The `regex` package. The pre-tokenizer patterns of byte-level files are written for Oniguruma and use
    Unicode classes (\\p{L} any letter, \\p{N} any number) and possessive quantifiers, which Python's `re`
    cannot express; `regex` reads them as written."""
    try:
        import regex
    except ImportError:
        raise ImportError("byte-level BPE tokenizers split text with Unicode patterns (\\p{L}, \\p{N}) that "
                          "Python's re cannot express: pip install regex  (or pip install -e .[bytelevel])") from None
    return regex


def split_by(pattern, behavior: str, invert: bool = False):
    """A function piece -> [pieces] that cuts at `pattern`'s matches, the way a Split pre-tokenizer does.

        >>> split_by(unicode_regex().compile(r"\\d"), "Isolated")("ab12c")
        ['ab', '1', '2', 'c']
    """

    def split(piece: str) -> list:
        runs, at = [], 0  # (text, is_match) in order, nothing empty
        for m in pattern.finditer(piece):
            if m.end() == m.start():
                continue
            if at < m.start():
                runs.append((piece[at : m.start()], invert))
            runs.append((m.group(), not invert))
            at = m.end()
        if at < len(piece):
            runs.append((piece[at:], invert))
        out = []
        for i, (text, match) in enumerate(runs):
            if not match or behavior == "Isolated":
                out.append(text)
            elif behavior == "Removed":
                continue
            elif behavior == "MergedWithPrevious" and out and not runs[i - 1][1]:
                out[-1] += text
            elif behavior == "MergedWithNext" and i + 1 < len(runs) and not runs[i + 1][1]:
                runs[i + 1] = (text + runs[i + 1][0], False)
            elif behavior == "Contiguous" and i and runs[i - 1][1]:
                out[-1] += text
            else:
                out.append(text)
        return out

    return split


def digits(individual: bool):
    """The Digits pre-tokenizer: each digit alone, or each run of digits, cut out of the word."""
    # subtle: "digit" here is Rust's char::is_numeric, Unicode category N (so "½" counts, \p{N}); Python's
    # str.isnumeric would also count CJK numerals such as "一", which tokenizers leaves inside the word
    return split_by(unicode_regex().compile(r"\p{N}" if individual else r"\p{N}+"), "Isolated")


class Tokenizer:
    def __init__(self, vocab: dict, merges: list, added: dict, special: set, prepend="every", bos=None, eos=None,
                 byte_fallback=True, unk=None, scores: dict = None, collapse_spaces=False, pre_tokenizer=None,
                 normalize=None, ignore_merges=False, suffix=(), lstrip=(), rstrip=()):
        self.vocab = vocab  # token string -> id
        self.inverse = {i: t for t, i in vocab.items()}
        self.inverse.update({i: t for t, i in added.items()})
        self.ranks = {tuple(m): r for r, m in enumerate(merges)}  # (left, right) -> rank
        self.added = added  # token string -> id, matched in raw text
        self.special = special  # ids that decode(skip_special=True) drops
        self.prepend = prepend  # "normalizer": every piece; Metaspace: "always", "first" piece only, or "never"
        self.bos, self.eos, self.byte_fallback, self.unk = bos, eos, byte_fallback, unk
        self.suffix = list(suffix)  # ids the post-processor puts after the text (encode(bos=True))
        self.lstrip, self.rstrip = set(lstrip), set(rstrip)  # added tokens that swallow the spaces beside them
        self.by_length = sorted(added, key=len, reverse=True)
        # tokenizer.model: no merge list; a pair merges when the joined piece is in the vocabulary, best score first
        self.scores = scores
        self.collapse_spaces = collapse_spaces  # SentencePiece's remove_extra_whitespaces
        # byte-level BPE: step 2 is a list of functions piece -> [pieces], run in order; None for SentencePiece
        self.pre_tokenizer = pre_tokenizer
        self.normalize = normalize  # byte-level: a unicodedata form ("NFC", ...) applied to each piece, or None
        self.ignore_merges = ignore_merges  # a word that is already in the vocabulary is one token, unmerged

    @property
    def byte_level(self) -> bool:
        return self.pre_tokenizer is not None

    @classmethod
    def from_file(cls, path):
        path = Path(path)
        if path.is_dir():
            found = [path / f for f in ("tokenizer.json", "tokenizer.model") if (path / f).is_file()]
            if not found:
                raise ValueError(f"{path}: no tokenizer.json or tokenizer.model")
            path = found[0]
        if path.suffix == ".model":
            return cls.from_sentencepiece(path)
        if not path.is_file():
            raise ValueError(f"{path}: no tokenizer.json or tokenizer.model")
        d = read_json(path)
        model = d.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(f"{path}: model type {model.get('type')!r} is not BPE; minivtp reads BPE tokenizers "
                             "(SentencePiece-style and byte-level), not WordPiece, Unigram or WordLevel")
        if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
            raise ValueError(f"{path}: a BPE model needs a 'vocab' object and a 'merges' list")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise ValueError(f"{path}: BPE with {key}={model[key]!r} is not implemented")
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        added = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
        special = {t["id"] for t in d.get("added_tokens", []) if t.get("special")}
        for t in d.get("added_tokens", []):
            if t.get("single_word"):
                raise ValueError(f"{path}: added token {t['content']!r} has single_word=true, not implemented")
        lstrip = {t["content"] for t in d.get("added_tokens", []) if t.get("lstrip")}
        rstrip = {t["content"] for t in d.get("added_tokens", []) if t.get("rstrip")}

        def steps(section, key):  # a Sequence's parts, or the one step; none for null
            spec = d.get(section) or {}
            return spec.get(key, []) if spec.get("type") == "Sequence" else [spec] if spec else []

        normalizers, pre, decoders = steps("normalizer", "normalizers"), steps("pre_tokenizer", "pretokenizers"), \
            steps("decoder", "decoders")
        byte_level = any(p.get("type") == "ByteLevel" for p in pre)
        if byte_level:
            pre_tokenizer, normalize = byte_level_pre_tokenizer(path, pre), None
            for n in normalizers:
                if n.get("type") not in ("NFC", "NFD", "NFKC", "NFKD") or normalize:
                    raise ValueError(f"{path}: normalizer {n.get('type')!r} is not implemented for byte-level BPE "
                                     "(one of NFC, NFD, NFKC, NFKD, or none)")
                normalize = n["type"]
            if [x.get("type") for x in decoders] != ["ByteLevel"]:
                raise ValueError(f"{path}: decoder {[x.get('type') for x in decoders]} is not implemented for "
                                 "byte-level BPE (it decodes with a ByteLevel decoder)")
            prepend = "never"
        else:
            pre_tokenizer = normalize = None
            # where "▁" is prepended: a Prepend normaliser (every piece) or a Metaspace pre-tokenizer (its scheme)
            prepend = "never"
            for n in normalizers:
                if n.get("type") == "Prepend" and n.get("prepend") == SPACE:
                    prepend = "normalizer"
                elif not (n.get("type") == "Replace" and n.get("content") == SPACE
                          and n.get("pattern") == {"String": " "}):
                    raise ValueError(f"{path}: normalizer {n.get('type')!r} ({n}) is not implemented for "
                                     "SentencePiece-style BPE (Prepend '▁' and Replace ' ' -> '▁' are)")
            for p in pre:
                if p.get("type") != "Metaspace":
                    raise ValueError(f"{path}: pre-tokenizer {p.get('type')!r} is not implemented (byte-level "
                                     "files have a ByteLevel one; SentencePiece-style ones none or Metaspace)")
                scheme = p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never")
                prepend = scheme
                if p.get("split", False):
                    raise ValueError(f"{path}: a Metaspace pre-tokenizer that splits words is not LLaMA's")
            for x in decoders:
                if x.get("type") not in ("Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"):
                    raise ValueError(f"{path}: decoder {x.get('type')!r} is not implemented for SentencePiece-style "
                                     "BPE (Replace, ByteFallback, Fuse, Strip and Metaspace are)")
        prefix, suffix = post_processor_ids(path, d.get("post_processor"), added, model["vocab"])
        if len(prefix) > 1:
            raise ValueError(f"{path}: the post-processor puts {len(prefix)} tokens before the text; minivtp "
                             "implements one (a BOS)")
        bos = prefix[0] if prefix else None
        eos = eos_of(path.parent / "tokenizer_config.json", added, model["vocab"])
        return cls(model["vocab"], merges, added, special, prepend, bos, eos, model.get("byte_fallback", False),
                   model.get("unk_token"), pre_tokenizer=pre_tokenizer, normalize=normalize,
                   ignore_merges=model.get("ignore_merges", False), suffix=suffix, lstrip=lstrip, rstrip=rstrip)

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
        """[(piece, is_added)]: step 1, added tokens cut out, longest match first."""
        out, start, i = [], 0, 0
        while i < len(text):
            hit = next((t for t in self.by_length if text.startswith(t, i)), None)
            if hit is None:
                i += 1
                continue
            end = i + len(hit)
            if hit in self.lstrip:  # the token swallows the spaces before it ...
                i = start + len(text[start:i].rstrip())
            if hit in self.rstrip:  # ... or after it
                end += len(text[end:]) - len(text[end:].lstrip())
            if start < i:
                out.append((text[start:i], False))
            out.append((hit, True))
            i = start = end
        if start < len(text):
            out.append((text[start:], False))
        return out

    def pre_tokenize(self, piece: str) -> list:
        """Byte-level step 2: the text between added tokens -> words, every byte written as its stand-in.

            >>> tok.pre_tokenize("Hello world!")      # SmolLM2's file: GPT-2's pattern
            ['Hello', 'Ġworld', '!']
        """
        if self.normalize:
            piece = unicodedata.normalize(self.normalize, piece)
        words = [piece]
        for step in self.pre_tokenizer:  # each step cuts every word of the step before
            words = [w for word in words for w in step(word)]
        return words

    def metaspace(self, piece: str, first: bool) -> str:
        """SentencePiece-style step 2: spaces become "▁", and a "▁" goes in front where the file says."""
        piece = piece.replace(" ", SPACE)
        # subtle: the Prepend normaliser adds "▁" to every piece, even one that starts with a space; the
        # Metaspace pre-tokenizer adds it only where the piece does not start with "▁" already
        metaspace = self.prepend == "always" or (self.prepend == "first" and first)
        if self.prepend == "normalizer" or (metaspace and not piece.startswith(SPACE)):
            piece = SPACE + piece
        return piece

    def symbols(self, piece: str) -> list:
        """Step 3: what the merges start from."""
        if self.byte_level:  # every character already stands for one byte, and every byte is in the vocabulary
            return list(piece)
        symbols, unknown = [], False
        for ch in piece:  # characters, or their bytes when the vocabulary lacks them
            if ch in self.vocab:
                symbols.append(ch)
            elif self.byte_fallback:
                symbols += [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
            elif unknown:  # without bytes to fall back on, a run of unknown characters is one <unk>
                symbols[-1] += ch
            else:
                symbols.append(ch)
            unknown = ch not in self.vocab and not self.byte_fallback
        return symbols

    def bpe(self, piece: str) -> list:
        """One pre-tokenized piece -> token strings (step 4, the same for both families)."""
        if self.ignore_merges and piece in self.vocab:  # LLaMA-3's files: a word in the vocabulary stays whole
            return [piece]
        symbols = self.symbols(piece)
        while len(symbols) > 1:  # the best-ranked adjacent pair, leftmost first
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

    def id_of(self, token: str) -> int:
        i = self.vocab.get(token, self.vocab.get(self.unk))
        if i is None:
            raise ValueError(f"{token!r} is not in the vocabulary and the tokenizer has no unknown token to stand "
                             "for it (a byte-level vocabulary should hold all 256 byte stand-ins)")
        return i

    def encode(self, text: str, bos: bool = True) -> list:
        """Text -> ids; `bos=True` adds what the file's post-processor adds (LLaMA's <s>; SmolLM2: nothing)."""
        ids = [self.bos] if bos and self.bos is not None else []
        if self.scores is not None:  # SentencePiece: normalise the whole text, then cut out user-defined pieces
            if self.collapse_spaces:  # leading, trailing and repeated spaces go
                text = re.sub(" +", " ", text).strip(" ")
            text = text.replace(" ", SPACE)
            if text and self.prepend == "first":
                text = SPACE + text  # the dummy prefix, once, before anything else
            for piece, is_added in self.split_added(text):
                ids += [self.added[piece]] if is_added else [self.id_of(t) for t in self.bpe(piece)]
            return ids
        for n, (piece, is_added) in enumerate(self.split_added(text)):  # step 1
            if is_added:
                ids.append(self.added[piece])
                continue
            words = self.pre_tokenize(piece) if self.byte_level else [self.metaspace(piece, first=n == 0)]  # step 2
            for word in words:
                ids += [self.id_of(t) for t in self.bpe(word)]  # steps 3 and 4
        return ids + (self.suffix if bos else [])

    # -- decoding ------------------------------------------------------------------------------------------

    def decode(self, ids, skip_special: bool = False) -> str:
        out = bytearray()
        for i in ids:
            i = int(i)
            if skip_special and i in self.special:
                continue
            if i not in self.inverse:
                raise ValueError(f"token id {i} is outside the vocabulary (ids 0..{max(self.inverse)})")
            tok = self.inverse[i]
            if self.byte_level:
                # subtle: a token is read as stand-ins only when every character is one; an added token such as
                # "<|im_start|>" is, but one with a real space or "日" in it is its own UTF-8 (as tokenizers does)
                stand_ins = all(c in CHAR_TO_BYTE for c in tok)
                out += bytes(CHAR_TO_BYTE[c] for c in tok) if stand_ins else tok.encode("utf-8")
                continue
            if self.scores is not None and tok == self.unk:
                tok = UNK_SURFACE  # what SentencePiece prints for <unk>
            m = BYTE.fullmatch(tok)
            out += bytes([int(m.group(1), 16)]) if m else tok.replace(SPACE, " ").encode("utf-8")
        text = out.decode("utf-8", errors="replace")
        if self.prepend != "never" and text.startswith(" "):
            text = text[1:]  # the "▁" that encoding put in front
        return text


# ------------------------------------------------------------------------------------------------------------
# the parts of tokenizer.json that say how a byte-level file splits, and which special tokens frame a text


def byte_level_pre_tokenizer(path, steps: list) -> list:
    """tokenizer.json's pre_tokenizer (its Sequence's parts) -> functions piece -> [pieces]."""
    out = []
    if sum(p.get("type") == "ByteLevel" for p in steps) != 1:
        raise ValueError(f"{path}: {sum(p.get('type') == 'ByteLevel' for p in steps)} ByteLevel pre-tokenizers; "
                         "minivtp implements exactly one")
    for p in steps:
        kind = p.get("type")
        if kind == "ByteLevel":
            regex = unicode_regex().compile(GPT2_PATTERN) if p.get("use_regex", True) else None
            out.append(byte_level_step(p.get("add_prefix_space", False), regex))
        elif kind == "Split":
            pattern, behavior = p.get("pattern") or {}, p.get("behavior")
            if behavior not in SPLIT_BEHAVIORS:
                raise ValueError(f"{path}: Split behavior {behavior!r} is not one of {', '.join(SPLIT_BEHAVIORS)}")
            if "Regex" in pattern:
                compiled = unicode_regex().compile(pattern["Regex"])
            elif "String" in pattern:
                compiled = re.compile(re.escape(pattern["String"]))
            else:
                raise ValueError(f"{path}: Split pattern {pattern!r} is neither a Regex nor a String")
            out.append(split_by(compiled, behavior, p.get("invert", False)))
        elif kind == "Digits":
            out.append(digits(p.get("individual_digits", False)))
        else:
            raise ValueError(f"{path}: pre-tokenizer {kind!r} is not implemented for byte-level BPE (ByteLevel, "
                             "Split and Digits are)")
    return out


def byte_level_step(add_prefix_space: bool, regex):
    """The ByteLevel pre-tokenizer: a space in front (if asked), GPT-2's split (if asked), bytes -> stand-ins."""

    def step(piece: str) -> list:
        if add_prefix_space and not piece.startswith(" "):
            piece = " " + piece
        words = [m.group() for m in regex.finditer(piece)] if regex else [piece]
        return ["".join(BYTE_TO_CHAR[b] for b in w.encode("utf-8")) for w in words if w]

    return step


def post_processor_ids(path, post, added: dict, vocab: dict):
    """(ids before the text, ids after it) that the post-processor adds to one sequence."""
    if not post:
        return [], []
    kind = post.get("type")
    if kind == "Sequence":
        prefix, suffix = [], []
        for p in post.get("processors", []):
            a, b = post_processor_ids(path, p, added, vocab)
            prefix, suffix = prefix + a, suffix + b
        return prefix, suffix
    if kind == "ByteLevel":  # it only trims offsets
        return [], []
    if kind != "TemplateProcessing":
        raise ValueError(f"{path}: post-processor {kind!r} is not implemented (TemplateProcessing and ByteLevel are)")
    prefix, suffix, seen_text = [], [], False
    for step in post.get("single", []):
        if "Sequence" in step:
            seen_text = True
            continue
        name = step["SpecialToken"]["id"]
        ids = (post.get("special_tokens", {}).get(name) or {}).get("ids") or [added.get(name, vocab.get(name))]
        if None in ids:
            raise ValueError(f"{path}: the post-processor's token {name!r} is not in the vocabulary")
        (suffix if seen_text else prefix).extend(ids)
    return prefix, suffix


def eos_of(config: Path, added: dict, vocab: dict):
    """The end-of-sequence id: tokenizer_config.json's eos_token when the checkpoint has one, else </s>."""
    name = "</s>"
    if config.is_file():
        eos = read_json(config).get("eos_token")
        name = (eos.get("content") if isinstance(eos, dict) else eos) or name
    return added.get(name, vocab.get(name))


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
