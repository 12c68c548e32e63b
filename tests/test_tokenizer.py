"""minivtp's tokenizer against the `tokenizers` library, on LLaMA-style tokenizer.json files that library wrote."""

import json

import pytest

from minivtp.tokenizer import Tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="the tokenizers library is the oracle: pip install -e .[test]")
from conftest import write_llama_tokenizer  # noqa: E402

TEXTS = [
    "What is the man doing in the video?",
    "USER: <image>\nWhat happens after he opens the window? ASSISTANT:",
    "<s>hello</s> world",
    "digits 0123456789 and 3.14 and 1,000,000",
    "whitespace   runs\t\tand\n\nnewlines   ",
    " leading space and trailing ",
    "Unicode: café, naïve, Ωmega, 日本語, emoji 🎬🐈, ünïcödé",
    "<image><image> two placeholders",
    "",
    "   ",
    "tomatoes kitchen slicing woman",
]


def build(tmp_path, legacy: bool):
    path = write_llama_tokenizer(tmp_path, legacy)
    return tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")), Tokenizer.from_file(path)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-prepend", "metaspace-first"])
def test_encode_and_decode_equal_the_tokenizers_library(tmp_path, legacy):
    ref, ours = build(tmp_path, legacy)
    assert ours.vocab["<0x41>"] == 3 + 0x41 and ours.added["<image>"] == len(ours.vocab)
    for text in TEXTS:
        want = ref.encode(text).ids
        assert ours.encode(text) == want, text
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=False), text
        assert ours.decode(want, skip_special=True) == ref.decode(want, skip_special_tokens=True), text


def test_byte_fallback_spells_unknown_characters_in_utf8(tmp_path):
    _, ours = build(tmp_path, True)
    ids = ours.encode("日", bos=False)
    # "▁" is known, "日" is not: its three UTF-8 bytes E6 97 A5 come out as byte tokens
    assert [ours.inverse[i] for i in ids][-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]
    assert ours.decode(ids) == "日"


def test_not_a_bpe_file_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "WordPiece"}}')
    with pytest.raises(ValueError, match="is not BPE"):
        Tokenizer.from_file(tmp_path)


# ---- tokenizer.model: SentencePiece's own file, against the sentencepiece library -------------------------------


def train_sentencepiece(tmp_path, name, **options):
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece is the oracle for tokenizer.model files")
    from conftest import TOKENIZER_CORPUS
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TOKENIZER_CORPUS))
    options = dict(dict(vocab_size=400, model_type="bpe", normalization_rule_name="identity", character_coverage=1.0,
                        minloglevel=2), **options)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / name), **options)
    return spm.SentencePieceProcessor(model_file=str(tmp_path / f"{name}.model")), tmp_path / f"{name}.model"


@pytest.mark.parametrize("options", [
    dict(byte_fallback=True),
    dict(byte_fallback=True, user_defined_symbols=["<image>", "<video>"]),
    dict(byte_fallback=False, vocab_size=300),
    dict(byte_fallback=True, remove_extra_whitespaces=False, add_dummy_prefix=False),
], ids=["byte-fallback", "user-defined", "no-byte-fallback", "keep-spaces-no-prefix"])
def test_tokenizer_model_equals_sentencepiece(tmp_path, options):
    sp, path = train_sentencepiece(tmp_path, "m", **options)
    ours = Tokenizer.from_file(path)
    for text in TEXTS + ["<image>at the start", "tomatoes<video>kitchen", " x", "a\nb"]:
        ids = sp.encode(text)
        assert ours.encode(text, bos=False) == ids, text
        assert ours.decode(ids) == sp.decode(ids), text
    assert (ours.bos, ours.eos) == (sp.bos_id(), sp.eos_id())
    assert ours.encode("hi")[0] == sp.bos_id()  # our encode puts <s> first, as LLaMA's tokenizer does


def test_a_directory_with_only_tokenizer_model_is_read(tmp_path):
    _, path = train_sentencepiece(tmp_path, "tokenizer", byte_fallback=True, user_defined_symbols=["<image>"])
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(path.read_bytes())
    tok = Tokenizer.from_file(d)
    assert tok.scores is not None and "<image>" in tok.added


@pytest.mark.parametrize("blob,match", [
    (b"", "no pieces"), (b"\xff\xff\xff", "not a SentencePiece model file"), (b"\x0a\xff\x01ab", "runs past"),
])
def test_a_broken_tokenizer_model_is_named(tmp_path, blob, match):
    f = tmp_path / "tokenizer.model"
    f.write_bytes(blob)
    with pytest.raises(ValueError, match=match) as e:
        Tokenizer.from_file(f)
    assert str(f) in str(e.value)


def test_a_unigram_model_is_refused_with_a_reason(tmp_path):
    _, path = train_sentencepiece(tmp_path, "uni", model_type="unigram", vocab_size=70)
    with pytest.raises(ValueError, match="a SentencePiece unigram model; minivtp reads BPE"):
        Tokenizer.from_file(path)


# ---- byte-level BPE (GPT-2, LLaMA-3, Qwen2, SmolLM2), against tokenizers on files it trains here ---------------

BYTE_LEVEL_TEXTS = TEXTS + [
    "Hello world, the sky is blue.",
    "I'm sure they'll say we've done what you'd DO, it's John's",
    "tabs\tand\r\nCRLF\r\n\r\n  and a non-breaking\u00a0space and an em\u2003space",
    "emoji runs 🎬🎬🐈‍⬛ 👩🏽‍🍳 flags 🇫🇷 and ‼️",
    "combining e\u0301 versus é, Å versus A\u030a, ﬁ ligature, ½ and ² and ①",
    "numbers 1 12 123 1234 12345 3.14159 -7 +8 1e-5 ١٢٣ 一二三",
    "mixed CamelCase snake_case kebab-case URL https://example.com/a?b=c#d",
    "русский текст, ελληνικά, עברית, العربية, हिन्दी, 한국어",
    "<|im_start|>user\nWhat is in frame 3?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>", "no<|im_end|>space", "  <|im_start|>  spaced  <|im_end|>  ",
    "<image> <image>x", "\n", "\n\n\n", " ", "a", "''", "'s", "!!!???...",
    # where regex engines may differ on \s, \p{L} and \p{N}: odd spaces, controls, marks, other numerals
    "a\x1cb \x1c c", "x\x0by\x0c z", "p\x85q \u2028 r\u2029s", "\u3000ideographic\u3000space", "zero\u200bwidth",
    "\ufeffbom", "rtl \u202e mark", "a\x00b", "Ⅻ roman ⅻ", "𝟘𝟙 math digits", "ǅ titlecase", "e\u0301\u0302 marks",
    "ﾊﾝｶｸ",
]

# the pre-tokenizer patterns of files in the wild, written as tokenizers' Split pre-tokenizer holds them
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
POSSESSIVE_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                      r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")


def byte_level_files():
    """name -> a function that sets a tokenizers.Tokenizer's normaliser, pre-tokenizer and post-processor."""
    from tokenizers import Regex, normalizers, pre_tokenizers, processors
    bl = pre_tokenizers.ByteLevel

    def split(pattern, behavior="isolated", invert=False):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(pattern, behavior, invert=invert),
                                        bl(add_prefix_space=False, use_regex=False)])

    return {
        "gpt2": dict(pre=bl(add_prefix_space=False)),
        "gpt2-prefix-space": dict(pre=bl(add_prefix_space=True)),
        "llama3": dict(pre=split(Regex(LLAMA3_PATTERN)), ignore_merges=True, post=processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)])])),
        "qwen2-nfc": dict(pre=split(Regex(QWEN2_PATTERN)), norm=normalizers.NFC()),
        "possessive-nfkc": dict(pre=split(Regex(POSSESSIVE_PATTERN)), norm=normalizers.NFKC()),
        "digits-then-gpt2": dict(pre=pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                              bl(add_prefix_space=False)])),
        "digit-runs-eos-after": dict(pre=pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                                  bl(add_prefix_space=False)]),
                                     post=processors.TemplateProcessing(single="$A <|endoftext|>",
                                                                        special_tokens=[("<|endoftext|>", 0)])),
        "split-space-merged-with-previous": dict(pre=split(" ", "merged_with_previous")),
        "split-punct-merged-with-next": dict(pre=split(Regex(r"[.,!?]"), "merged_with_next")),
        "split-space-removed-prefix": dict(pre=pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"),
                                                                        bl(add_prefix_space=True, use_regex=False)])),
        "split-digits-contiguous": dict(pre=split(Regex(r"\d"), "contiguous")),
        "split-letters-inverted": dict(pre=split(Regex(r"\p{L}+"), "isolated", invert=True)),
    }


def train_byte_level(tmp_path, name, pre=None, norm=None, post=None, ignore_merges=False):
    """A byte-level BPE tokenizer.json trained by tokenizers itself, with every byte in its alphabet."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from conftest import TOKENIZER_CORPUS
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if norm is not None:
        tok.normalizer = norm
    specials = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]
    corpus = TOKENIZER_CORPUS[:5] + BYTE_LEVEL_TEXTS[:12] + ["Hello world, I'm sure it's 2024. " * 3]
    tok.train_from_iterator(corpus * 20, trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    tok.add_tokens([AddedToken("<image>", normalized=False, lstrip=True),
                    AddedToken("<frame sep>", normalized=False, rstrip=True)])
    if post is not None:
        tok.post_processor = post
    path = tmp_path / name
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    if ignore_merges:  # the trainer never writes it; LLaMA-3's files have it
        d = json.loads((path / "tokenizer.json").read_text())
        d["model"]["ignore_merges"] = True
        # and a word that no merge reaches any more: with ignore_merges " the" is one token, without it two
        d["model"]["merges"] = [m for m in d["model"]["merges"] if "".join(m) != "Ġthe"]
        (path / "tokenizer.json").write_text(json.dumps(d))
        tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
    return tok, path


@pytest.mark.parametrize("name", list(byte_level_files()))
def test_byte_level_equals_the_tokenizers_library(tmp_path, name):
    ref, path = train_byte_level(tmp_path, name, **byte_level_files()[name])
    ours = Tokenizer.from_file(path)
    assert ours.byte_level and None not in ours.inverse
    for text in BYTE_LEVEL_TEXTS + ["x <image> y <frame sep>  z", "<image><frame sep>", "on the mat"]:
        want = ref.encode(text).ids
        assert ours.encode(text) == want, text
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=False), text
        assert ours.decode(want, skip_special=True) == ref.decode(want, skip_special_tokens=True), text
    cut = ours.encode("🎬 é", bos=False)[:2]  # half of a character's bytes decodes to U+FFFD, as in tokenizers
    assert ours.decode(cut) == ref.decode(cut, skip_special_tokens=False) and "\ufffd" in ours.decode(cut)


def test_bytes_to_unicode_is_gpt2s_table():
    from minivtp.tokenizer import bytes_to_unicode
    from tokenizers import pre_tokenizers
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert (table[ord(" ")], table[ord("\n")], table[0xE9]) == ("Ġ", "Ċ", "é")


def test_a_byte_level_vocabulary_without_every_byte_is_an_error_not_a_dropped_character(tmp_path):
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=40, show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    assert tok.encode("hello x").tokens == ["hello", "Ġ"]  # tokenizers drops the "x" without a word
    with pytest.raises(ValueError, match="'x' is not in the vocabulary"):
        Tokenizer.from_file(tmp_path).encode("hello x")


def edit(path, section, value):
    d = json.loads((path / "tokenizer.json").read_text())
    d[section] = value
    (path / "tokenizer.json").write_text(json.dumps(d))


@pytest.mark.parametrize("section,value,match", [
    ("normalizer", {"type": "Lowercase"}, "normalizer 'Lowercase' is not implemented"),
    ("normalizer", {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "StripAccents"}]},
     "normalizer 'StripAccents' is not implemented"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, {"type": "ByteLevel"}]},
     "pre-tokenizer 'Whitespace' is not implemented"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Shuffled", "invert": False}, {"type": "ByteLevel"}]},
     "Split behavior 'Shuffled'"),
    ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}, r"decoder \['WordPiece'\] is not implemented"),
    ("decoder", None, r"decoder \[\] is not implemented"),
    ("post_processor", {"type": "BertProcessing", "sep": ["</s>", 2], "cls": ["<s>", 1]},
     "post-processor 'BertProcessing' is not implemented"),
    ("model", {"type": "Unigram", "vocab": []}, "model type 'Unigram' is not BPE"),
])
def test_what_is_not_implemented_is_refused_by_name(tmp_path, section, value, match):
    _, path = train_byte_level(tmp_path, "f", **byte_level_files()["gpt2"])
    edit(path, section, value)
    with pytest.raises(ValueError, match=match) as e:
        Tokenizer.from_file(path)
    assert str(path / "tokenizer.json") in str(e.value)


def test_sentencepiece_files_refuse_what_they_do_not_implement_too(tmp_path):
    path = write_llama_tokenizer(tmp_path, legacy=True)
    edit(path, "normalizer", {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Prepend",
                                                                                   "prepend": "\u2581"}]})
    with pytest.raises(ValueError, match="normalizer 'NFKC'"):
        Tokenizer.from_file(path)
    path = write_llama_tokenizer(tmp_path, legacy=False)
    edit(path, "pre_tokenizer", {"type": "Whitespace"})
    with pytest.raises(ValueError, match="pre-tokenizer 'Whitespace' is not implemented"):
        Tokenizer.from_file(path)


def test_a_single_word_added_token_is_refused(tmp_path):
    _, path = train_byte_level(tmp_path, "f", **byte_level_files()["gpt2"])
    d = json.loads((path / "tokenizer.json").read_text())
    d["added_tokens"][-1]["single_word"] = True
    (path / "tokenizer.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="single_word"):
        Tokenizer.from_file(path)


def test_an_id_outside_the_vocabulary_is_named(tmp_path):
    _, path = train_byte_level(tmp_path, "f", **byte_level_files()["gpt2"])
    with pytest.raises(ValueError, match="token id 100000 is outside the vocabulary"):
        Tokenizer.from_file(path).decode([5, 100000])


def test_without_the_regex_package_the_message_says_what_to_install(tmp_path, monkeypatch):
    import sys
    _, path = train_byte_level(tmp_path, "f", **byte_level_files()["gpt2"])
    monkeypatch.setitem(sys.modules, "regex", None)  # what `import regex` meets when it is not installed
    with pytest.raises(ImportError, match="pip install regex"):
        Tokenizer.from_file(path)
