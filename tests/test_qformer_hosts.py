"""The Q-Former hosts (minivtp/hosts/): InstructBLIP-Video against transformers' own implementation on tiny
checkpoints it wrote, part by part (EVA tower, Q-Former, whole-model logits), then LLM-VTP, FastV and Look-M on
its query tokens, and PruMerge+ refused."""

import json
import shutil

import pytest
import torch
from conftest import TOKENIZER_CORPUS, randomize, transformers, write_llama_tokenizer

import weights
from minivtp.generate import Method, generate
from minivtp.hosts.qformer import WordPiece
from minivtp.rivals import FastV, LookM, PruMergePlus

T, NQ, S = 3, 5, 28  # frames, query tokens per frame, image side (4 x 4 patches of 7)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def write_wordpiece(d):
    """A BERT WordPiece vocabulary trained by `tokenizers` on the test corpus, saved where transformers'
    InstructBlipVideoProcessor puts its qformer_tokenizer."""
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(TOKENIZER_CORPUS, vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    (d / "qformer_tokenizer").mkdir(parents=True, exist_ok=True)
    tok.save_model(str(d / "qformer_tokenizer"))
    return d / "qformer_tokenizer" / "vocab.txt"


@pytest.fixture(scope="session")
def blip(tmp_path_factory):
    """(directory, transformers InstructBlipVideoForConditionalGeneration): vocab and <image> shared with a
    tokenizer.json, a WordPiece vocabulary in qformer_tokenizer/."""
    root = tmp_path_factory.mktemp("instructblipvideo")
    tok_dir = write_llama_tokenizer(root)
    from minivtp.tokenizer import Tokenizer
    video_id = Tokenizer.from_file(tok_dir).added["<image>"]
    d = root / "ibv"
    d.mkdir()
    vocab = write_wordpiece(d)
    n_wp = len(vocab.read_text().splitlines())
    vision = transformers.InstructBlipVideoVisionConfig(hidden_size=32, intermediate_size=56, num_hidden_layers=3,
                                                        num_attention_heads=4, image_size=S, patch_size=7)
    qformer = transformers.InstructBlipVideoQFormerConfig(vocab_size=n_wp, hidden_size=24, num_hidden_layers=3,
                                                          num_attention_heads=4, intermediate_size=40,
                                                          max_position_embeddings=64)
    text = transformers.LlamaConfig(vocab_size=video_id + 1, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    cfg = transformers.InstructBlipVideoConfig(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                               text_config=text.to_dict(), num_query_tokens=NQ,
                                               video_token_index=video_id)
    torch.manual_seed(0)
    hf = randomize(transformers.InstructBlipVideoForConditionalGeneration(cfg), seed=4, std=0.3).eval()
    hf.save_pretrained(d)
    shutil.copy(tok_dir / "tokenizer.json", d)
    return d, hf


def qformer_input(d, text="What is the man doing in the video?"):
    return torch.tensor([WordPiece.from_dir(d).encode(text)])


# ---- the parts against transformers -----------------------------------------------------------------------------


def test_wordpiece_equals_bert_tokenizer(blip):
    d, _ = blip
    from tokenizers import BertWordPieceTokenizer
    ref = BertWordPieceTokenizer(str(d / "qformer_tokenizer" / "vocab.txt"), lowercase=True)  # BERT's pipeline
    ours = WordPiece.from_dir(d)
    odd = ["Héllo, WORLD!! x-ray's 3.5", "zzqx unknownword?", "a\tb\nc  d", "猫が好き"]
    for text in TOKENIZER_CORPUS[:5] + odd:
        assert ours.encode(text) == ref.encode(text).ids, text


def test_eva_tower_hidden_states_equal_transformers(blip):
    d, hf = blip
    model = weights.load_video_llm(d)
    px = torch.randn(T, 3, S, S)
    with torch.no_grad():
        ref = hf.vision_model(px, output_hidden_states=True)
        x = model.vision.embed(px)
        ours = [x]
        for block in model.vision.layers:
            x = block(x)
            ours.append(x)
        states = ref.hidden_states
        assert len(states) in (len(ours), len(ours) - 1) and len(ours) == 4  # with or without the embeddings
        for a, b in zip(ours[len(ours) - len(states):], states):
            assert rel_err(a, b) <= 1e-4
        assert rel_err(model.vision(px), ref.last_hidden_state) <= 1e-4  # after post_layernorm (LAVIS: ln_vision)


def test_qformer_hidden_states_equal_transformers(blip):
    d, hf = blip
    model = weights.load_video_llm(d)
    px = torch.randn(T, 3, S, S)
    q = qformer_input(d)
    with torch.no_grad():
        image = hf.vision_model(px).last_hidden_state  # (T, 1+P, Cv)
        ref = hf.qformer(input_ids=q.repeat(T, 1), query_embeds=hf.query_tokens.expand(T, -1, -1),
                         encoder_hidden_states=image, output_hidden_states=True)
        x = model.qformer.embed(T, q)
        ours = []
        for layer in model.qformer.layers:
            x = layer(x, image, NQ)
            ours.append(x)
        assert len(ref.hidden_states) >= len(ours) == 3
        for a, b in zip(ours[::-1], ref.hidden_states[::-1]):  # the last len(ours) states are the layers'
            assert a.shape == b.shape and rel_err(a, b) <= 1e-4
        assert rel_err(model.qformer(image, q), ref.last_hidden_state[:, :NQ]) <= 1e-4
        # without the instruction (BLIP-2's Q-Former): queries alone
        ref2 = hf.qformer(input_ids=None, query_embeds=hf.query_tokens.expand(T, -1, -1), encoder_hidden_states=image)
        assert rel_err(model.qformer(image, None), ref2.last_hidden_state) <= 1e-4


def test_whole_prompt_logits_equal_transformers(blip):
    d, hf = blip
    model = weights.load_video_llm(d)
    assert model.arrangement == "instructblip-video" and model.tokens_per_frame() == NQ
    video = model.image_token
    px = torch.randn(T, 3, S, S)
    q = qformer_input(d)
    ids = torch.tensor([video, 1, 40, 41, 42, 43, 44])  # one placeholder; transformers wants T * Nq of them
    hf_ids = torch.cat([torch.full((T * NQ,), video), ids[1:]])
    with torch.no_grad():
        ref = hf(pixel_values=px[None], qformer_input_ids=q, input_ids=hf_ids[None]).logits
        embeds, span, _ = model.prompt(ids, px, qformer_ids=q)
        ours = model.llm.forward_embeds(embeds)
    assert (span.start, span.frames, span.tokens_per_frame) == (0, T, NQ)
    assert ours.shape == ref.shape and rel_err(ours, ref) <= 1e-4


# ---- LLM-VTP and its rivals on query tokens ---------------------------------------------------------------------


def host_prompt(d, frames=4, seed=0):
    model = weights.load_video_llm(d)
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(frames, 3, S, S, generator=g)
    ids = torch.tensor([model.image_token, 1] + torch.randint(3, 90, (9,), generator=g).tolist())
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, px, qformer_ids=qformer_input(d))
    return model, embeds, span


def test_alpha_one_equals_unpruned(blip):
    model, embeds, span = host_prompt(blip[0])
    plain = generate(model.llm, embeds, 6)
    for method in (Method(alpha=1.0, layer=2), FastV(alpha=1.0, layer=2)):
        out = generate(model.llm, embeds, 6, video=span, method=method)
        assert out.tokens.tolist() == plain.tokens.tolist() and out.kept.numel() == span.frames * NQ


def test_llm_vtp_keeps_ceil_alpha_nq_of_every_frame(blip):
    model, embeds, span = host_prompt(blip[0])
    out = generate(model.llm, embeds, 4, video=span, alpha=0.4, layer=2)  # ceil(0.4 * 5) = 2 per frame
    frame = (out.kept - span.start) // NQ
    assert torch.bincount(frame, minlength=span.frames).tolist() == [2] * span.frames
    assert out.cache_len == embeds.shape[1] - span.frames * (NQ - 2)
    # the kept query tokens are the ones layer 2's question rows attended to most, frame by frame
    from minivtp import vtp
    assert torch.equal(out.kept, vtp.select_per_frame(out.pruning.scores, span, 0.4))


@pytest.mark.parametrize("method", ["fastv", "look-m"])
def test_rivals_run_on_query_tokens(blip, method):
    model, embeds, span = host_prompt(blip[0])
    rival = FastV(alpha=0.4, layer=2) if method == "fastv" else LookM(recent=0.2, important=0.2)
    out = generate(model.llm, embeds, 4, video=span, method=rival)
    assert 1 <= len(out.tokens) <= 4
    if method == "fastv":
        assert out.kept.numel() == 8  # ceil(0.4 * 4 frames * 5), over the whole video
    else:
        assert max(out.cache_lens) < embeds.shape[1]


def test_prumerge_is_refused_with_the_reason(blip):
    d, _ = blip
    model = weights.load_video_llm(d)
    ids = torch.tensor([model.image_token, 1, 40])
    with pytest.raises(ValueError, match=r"PruMerge\+ cannot run on a Q-Former host.*no.*\[CLS\]|\[CLS\]"):
        PruMergePlus().prompt(model, ids, torch.randn(2, 3, S, S), qformer_ids=qformer_input(d))


# ---- the command line -------------------------------------------------------------------------------------------


def run(*args):
    """`python -m minivtp ARGS`, in this process (a fresh interpreter would spend seconds importing torch):
    the exit code and what it printed."""
    from minivtp.__main__ import main
    return run_main(main, *args)


def run_main(main, *args):
    """A command's main(argv) in this process: (returncode, stdout, stderr) as subprocess.run gives them."""
    import contextlib
    import io
    from types import SimpleNamespace
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse's errors
            rc = e.code
    return SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())


def clip(path, n=4):
    from safetensors.torch import save_file
    save_file({"frames": torch.randint(0, 256, (n, 32, 40, 3), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(n))}, path)
    return path


@pytest.mark.parametrize("method", ["llm-vtp", "fastv", "look-m"])
def test_cli_answer_on_a_qformer_host(blip, tmp_path, method):
    d, _ = blip
    out = run("answer", "--weights", d, "--video", clip(tmp_path / "c.safetensors"), "--question", "What is he doing?",
              "--method", method, "--alpha", 0.4, "--layer", 2, "--max-new-tokens", 4, "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    from minivtp.tokenizer import Tokenizer
    text_rows = len(Tokenizer.from_file(d).encode("What is he doing?"))  # <s> and the question, after the video
    assert r["video_tokens"] == 4 * NQ and r["prompt_rows"] == 4 * NQ + text_rows
    if method == "llm-vtp":
        assert r["kept_video_tokens"] == 4 * 2 and r["cache_rows"] == r["prompt_rows"] - 4 * (NQ - 2)


def test_cli_prumerge_on_a_qformer_host_is_one_line(blip, tmp_path):
    d, _ = blip
    for cmd in (["answer", "--question", "Why?", "--video", clip(tmp_path / "c.safetensors")],
                ["eval", "--questions", tmp_path / "q.json", "--videos", tmp_path, "--out", tmp_path / "o.jsonl"]):
        out = run(*cmd, "--weights", d, "--method", "prumerge+", "--device", "cpu")
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert out.returncode == 2 and len(errors) == 1, out.stderr
        assert "PruMerge+ cannot run on a Q-Former host" in errors[0] and "[CLS]" in errors[0]


def test_cli_eval_on_a_qformer_host(blip, tmp_path):
    d, _ = blip
    clip(tmp_path / "a.safetensors", 5)
    clip(tmp_path / "b.safetensors", 3)
    qs = [dict(video="a.safetensors", question="What is the man doing?", candidates=["cooking", "running"],
               answer="running"),
          dict(video="b.safetensors", question="Where is the dog?", candidates=["inside", "outside", "nowhere"],
               answer="inside")]
    (tmp_path / "q.json").write_text(json.dumps(qs))
    for alpha in (1.0, 0.2):
        out = run("eval", "--weights", d, "--questions", tmp_path / "q.json", "--videos", tmp_path, "--alpha", alpha,
                  "--layer", 1, "--out", tmp_path / f"r{alpha}.jsonl", "--device", "cpu", "--json")
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in (tmp_path / f"r{alpha}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all("error" not in r for r in rows), rows
        assert all(r["kept_ratio"] == (1.0 if alpha == 1 else 1 / NQ) for r in rows)  # ceil(0.2 * 5) = 1 per frame


def test_long_instructions_are_cut_on_the_left_as_their_bert_tokenizer_does(blip):
    from tokenizers import BertWordPieceTokenizer
    d, _ = blip
    model = weights.load_video_llm(d)
    model.max_txt_len = 12
    ref = BertWordPieceTokenizer(str(d / "qformer_tokenizer" / "vocab.txt"), lowercase=True)
    ref._tokenizer.enable_truncation(12, direction="left")  # ST-LLM and VideoChat2: truncation_side="left"
    text = " ".join(TOKENIZER_CORPUS[:3])
    assert model.qformer_ids(text)[0].tolist() == ref.encode(text).ids and len(ref.encode(text).ids) == 12


def test_the_wordpiece_docstring_example_runs():
    import doctest

    from minivtp.hosts import qformer
    result = doctest.testmod(qformer)
    assert result.attempted >= 2 and result.failed == 0
