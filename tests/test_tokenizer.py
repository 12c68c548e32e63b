"""minivtp's tokenizer against the `tokenizers` library, on LLaMA-style tokenizer.json files that library wrote."""

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
