"""The one path from a checkpoint and a video to an answer (minivtp/evaluation/pipeline.py) and the host contract
it walks (minivtp/hosts/__init__.py): the README's "From Python" both ways, the same answer as `answer` prints,
and the host's logits equal to transformers' own."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import weights
from minivtp.evaluation.pipeline import Pipeline
from minivtp.generate import Method, generate
from minivtp.hosts import Host, Prompt
from minivtp.hosts.frames import read_frames
from minivtp.rivals import FastV, LookM, PruMergePlus
from minivtp.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def clip(tmp_path, seed=4):
    path = tmp_path / "clip.safetensors"
    g = torch.Generator().manual_seed(seed)
    save_file({"frames": torch.randint(0, 256, (6, 30, 34, 3), dtype=torch.uint8, generator=g)}, path)
    return path


def test_the_readme_path_step_by_step_is_the_pipeline_s_answer(llava, tmp_path):
    video = clip(tmp_path)
    pipe = Pipeline.load(llava[1])
    frames, note = pipe.read(video)
    assert note is None and len(frames) == pipe.vm.frames == 4
    a = pipe.answer(frames, "What is it?", Method(alpha=0.5, layer=2), max_new_tokens=5)
    vm, tok = weights.load_video_llm(llava[1]), Tokenizer.from_file(llava[1])
    frames, _ = read_frames(video, vm.frames, vm.sample_indices)
    ids, extra = vm.encode(tok, "What is it?")
    embeds, span, positions = vm.prompt(ids, vm.preprocess(frames), **extra)
    assert torch.equal(positions, torch.arange(embeds.shape[1]))
    out = generate(vm.llm, embeds, 5, video=span, alpha=0.5, layer=2, eos_id=tok.eos)
    assert out.tokens.tolist() == a.generation.tokens.tolist() and torch.equal(out.kept, a.generation.kept)
    assert a.kept == out.kept.numel() == span.frames * 2 and a.video_tokens == span.frames * span.tokens_per_frame
    assert a.text == tok.decode([t for t in out.tokens.tolist() if t != tok.eos], skip_special=True)


def test_the_command_prints_the_pipeline_s_answer(llava, tmp_path):
    video = clip(tmp_path, seed=5)
    pipe = Pipeline.load(llava[1])
    frames, _ = pipe.read(video)
    for method, flags in ((Method(alpha=0.5, layer=2), ["--alpha", "0.5", "--layer", "2"]),
                          (FastV(alpha=0.5, layer=1), ["--method", "fastv", "--alpha", "0.5", "--layer", "1"]),
                          (LookM(recent=0.2, important=0.2), ["--method", "look-m", "--recent", "0.2", "--important",
                                                             "0.2"]),
                          (PruMergePlus(), ["--method", "prumerge+"]), (None, ["--alpha", "1"])):
        a = pipe.answer(frames, "Why?", method, max_new_tokens=4)
        run = subprocess.run([sys.executable, "-m", "minivtp", "answer", "--weights", str(llava[1]), "--video",
                              str(video), "--question", "Why?", "--max-new-tokens", "4", "--device", "cpu",
                              "--json", *flags], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 0, run.stderr
        d = json.loads(run.stdout)
        assert (d["answer"], d["kept_video_tokens"], d["video_tokens"]) == (a.text.strip(), a.kept, a.video_tokens)
        assert d["cache_rows_per_layer"] == a.generation.cache_lens


def test_every_host_keeps_the_contract(llava):
    """Prompt is (embeds, video, positions); the splice puts the video where the placeholder was, the prefix and
    the question's embeddings unchanged around it; logits are the LLM's on the prompt, float32."""
    vm, tok = weights.load_video_llm(llava[0]), Tokenizer.from_file(llava[0])
    assert isinstance(vm, Host)
    ids, extra = vm.encode(tok, "What is it?", "eval_mvbench")
    pixels = torch.randn(2, 3, 28, 28)
    p = vm.prompt(ids, pixels, **extra)
    assert isinstance(p, Prompt) and p.embeds.shape[1] == ids.numel() - 1 + p.video.frames * p.video.tokens_per_frame
    i = (ids == vm.image_token).nonzero().item()
    assert p.video.start == i
    torch.testing.assert_close(p.embeds[0, :i], vm.llm.embed(ids[:i]))
    torch.testing.assert_close(p.embeds[0, p.video.end :], vm.llm.embed(ids[i + 1 :]))
    logits = vm.logits(ids, pixels, **extra)
    assert logits.dtype == torch.float32 and logits.shape == (p.embeds.shape[1], vm.llm.cfg.vocab_size)
    torch.testing.assert_close(logits, vm.llm.forward_embeds(p.embeds)[0].float())


def test_host_logits_equal_transformers(llava):
    """vm.logits against LlavaForConditionalGeneration's own forward on the same ids and pixels (float32; 1e-4,
    the tolerance of the loader's tests: the same arithmetic in another order)."""
    hf = llava[2]
    vm = weights.load_video_llm(llava[0])
    ids = torch.tensor([1, 5, vm.image_token, 7, 9])
    pixels = torch.randn(1, 3, 28, 28)
    n = vm.tokens_per_frame()
    hf_ids = torch.cat([ids[:2], torch.full((n,), vm.image_token), ids[3:]])[None]
    with torch.no_grad():
        want = hf(input_ids=hf_ids, pixel_values=pixels).logits[0].float()
    torch.testing.assert_close(vm.logits(ids, pixels), want, rtol=1e-4, atol=1e-4)
