"""python -m minivtp generate on a tiny random LLaMA with a SentencePiece-style tokenizer: Vicuna's conversation
with --chat, the prompt as it is without, each against transformers' greedy generate on the same ids."""

import pytest
import torch
from conftest import write_llama, write_llama_tokenizer

from minivtp.__main__ import main
from minivtp.hosts.prompts import VICUNA_SYSTEM, chat_prompt
from minivtp.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = write_llama_tokenizer(tmp_path_factory.mktemp("vicuna"), legacy=True)
    tok = Tokenizer.from_file(d)
    hf = write_llama(d, vocab_size=len(tok.inverse), max_position_embeddings=512)
    return d, tok, hf


@pytest.mark.parametrize("chat", [True, False], ids=["vicuna", "plain"])
def test_generate_equals_transformers_greedy(tiny, capsys, chat):
    d, tok, hf = tiny
    question = "What is the man doing?"
    text = chat_prompt(question, chatml=False) if chat else question
    assert not chat or text == f"{VICUNA_SYSTEM} USER: {question} ASSISTANT:"
    ids = tok.encode(text)
    assert ids[0] == tok.bos  # LLaMA's <s>, which SmolLM2's tokenizer does not add
    want = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=tok.eos,
                       pad_token_id=tok.eos)[0, len(ids):].tolist()
    assert main(["generate", "--weights", str(d), "--prompt", question, "--max-new-tokens", "6"]
                + (["--chat"] if chat else [])) == 0
    out, err = capsys.readouterr()
    assert out == tok.decode([t for t in want if t != tok.eos], skip_special=True) + "\n"
    assert f"prefill of {len(ids)} prompt tokens" in err and "tokens/s" in err


def test_generate_without_a_tokenizer_is_one_line(tmp_path, capsys):
    write_llama(tmp_path)
    capsys.readouterr()
    assert main(["generate", "--weights", str(tmp_path), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no tokenizer.json or tokenizer.model" in err
