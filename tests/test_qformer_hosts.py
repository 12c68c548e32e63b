"""The Q-Former hosts (minivtp/hosts/): InstructBLIP-Video against transformers' own implementation on tiny
checkpoints it wrote, part by part (EVA tower, Q-Former, whole-model logits), then LLM-VTP, FastV and Look-M on
its query tokens, and PruMerge+ refused."""

import json
import shutil

import pytest
import torch
from conftest import TOKENIZER_CORPUS, randomize, transformers, write_llama_tokenizer

import weights
from minivtp.generate import generate
from minivtp.hosts.qformer import WordPiece

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
    for text in TOKENIZER_CORPUS[:5] + ["Héllo, WORLD!! x-ray's 3.5", "zzqx unknownword?", "a\tb\nc  d", "猫が好き"]:
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
        embeds, span = model.prompt(ids, px, qformer_ids=q)
        ours = model.llm.forward_embeds(embeds)
    assert (span.start, span.frames, span.tokens_per_frame) == (0, T, NQ)
    assert ours.shape == ref.shape and rel_err(ours, ref) <= 1e-4
