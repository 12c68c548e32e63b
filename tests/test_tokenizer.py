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
