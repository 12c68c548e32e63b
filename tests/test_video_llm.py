"""PLLaVA / Tarsier / LLaVA end to end on tiny checkpoints transformers wrote: vision tower, projector, pooling,
prompt splicing, LoRA merging, and the `python -m minivtp answer` command."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import GRID, transformers
from safetensors.torch import load_file, save_file

import weights
from minivtp.lab import png
from minivtp.hosts.llava import pllava_pool, preprocess, tarsier_layout

ROOT = Path(__file__).resolve().parents[1]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_vision_features_and_projector_equal_transformers(llava):
    plain, _, hf = llava
    model = weights.load_video_llm(plain)
    px = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        ref = hf.model.vision_tower(px, output_hidden_states=True).hidden_states[-2]  # (T, 1+P, Cv)
        ours = model.vision(px, -2)
        assert rel_err(ours, ref) <= 1e-4
        assert rel_err(model.projector(ours[:, 1:]), hf.model.multi_modal_projector(ref[:, 1:])) <= 1e-4


def test_without_pooling_the_whole_prompt_equals_llava(llava):
    plain, _, hf = llava
    model = weights.load_video_llm(plain)
    assert model.arrangement == "llava" and model.tokens_per_frame() == GRID * GRID
    T, image = 3, model.image_token
    px = torch.randn(T, 3, 28, 28)
    ids = torch.tensor([1, 40, 41, image, 42, 43, 44, 45])
    hf_ids = torch.cat([ids[:3], torch.full((T * GRID * GRID,), image), ids[4:]])  # transformers wants one per feature
    with torch.no_grad():
        ref = hf(input_ids=hf_ids[None], pixel_values=px).logits
        embeds, span, _ = model.prompt(ids, px)
        ours = model.llm.forward_embeds(embeds)
    assert (span.start, span.frames, span.tokens_per_frame) == (3, T, GRID * GRID)
    assert ours.shape == ref.shape and rel_err(ours, ref) <= 1e-4


def test_pllava_pooling_is_adaptive_avg_pool3d_on_the_frame_grid(llava):
    _, pllava, hf = llava
    model = weights.load_video_llm(pllava)
    assert model.arrangement == "pllava" and model.pooling_shape == (2, 2, 2) and model.frames == 4
    px = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        feats = hf.model.multi_modal_projector(hf.model.vision_tower(px, output_hidden_states=True).hidden_states[-2][:, 1:])
        ref = F.adaptive_avg_pool3d(feats.permute(2, 0, 1).reshape(1, -1, 4, GRID, GRID), (2, 2, 2))  # (1, C, 2, 2, 2)
        ref = ref[0].permute(1, 2, 3, 0).reshape(8, -1)  # frame by frame, row by row
        ours, T = model.video_tokens(px)
    assert T == 2 and rel_err(ours, ref) <= 1e-4
    # by hand: pooled token (frame 0, row 0, col 0) is the mean of frames 0-1, rows 0-1, cols 0-1
    block = feats.view(4, GRID, GRID, -1)[:2, :2, :2].mean(dim=(0, 1, 2))
    torch.testing.assert_close(ours[0], block, rtol=1e-5, atol=1e-6)


def test_tarsier_layout_inserts_newlines_and_frame_separators():
    x = torch.arange(2 * 4).float().view(2, 4, 1)  # 2 frames of a 2 x 2 grid, one channel
    out = tarsier_layout(x, 2, newline=torch.tensor([-1.0]), frame_sep=torch.tensor([-2.0]))
    assert out.flatten().tolist() == [0, 1, -1, 2, 3, -1, -2, 4, 5, -1, 6, 7, -1, -2]


def test_pooling_helper_keeps_frames_contiguous():
    x = torch.randn(4, 16, 5)
    out = pllava_pool(x, 4, (4, 4, 4))  # no pooling at all: the identity, frame by frame
    torch.testing.assert_close(out, x.reshape(64, 5))


def test_preprocess_shape_and_normalisation():
    frames = torch.full((2, 40, 60, 3), 255, dtype=torch.uint8)
    px = preprocess(frames, 28)
    assert px.shape == (2, 3, 28, 28)
    torch.testing.assert_close(px[:, 0], torch.full((2, 28, 28), (1 - 0.48145466) / 0.26862954))


# ---- LoRA --------------------------------------------------------------------------------------------------------


def test_lora_merge_equals_base_plus_adapter_unmerged(llava, tmp_path):
    plain, _, _ = llava
    lora_dir = tmp_path / "lora"
    shutil.copytree(plain, lora_dir)
    tensors = load_file(lora_dir / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    r, alpha, adapters = 4, 8.0, {}
    for i in range(3):
        for proj in ("q_proj", "v_proj"):  # what PLLaVA adapts
            name = f"language_model.model.layers.{i}.self_attn.{proj}"
            W = tensors.pop(name + ".weight")
            tensors[name + ".base_layer.weight"] = W  # PEFT's layout
            A = torch.randn(r, W.shape[1], generator=g) * 0.3
            B = torch.randn(W.shape[0], r, generator=g) * 0.3
            tensors[name + ".lora_A.default.weight"], tensors[name + ".lora_B.default.weight"] = A, B
            adapters[(i, proj)] = (A, B)
    save_file(tensors, lora_dir / "model.safetensors", metadata={"format": "pt"})
    (lora_dir / "adapter_config.json").write_text(json.dumps({"lora_alpha": alpha, "r": r}))
    merged = weights.load_video_llm(lora_dir)
    assert merged.load_info["lora_merged"] == {"targets": 6, "lora_alpha": alpha, "ranks": [r]}
    base = weights.load_video_llm(plain)  # the same base weights, adapters run beside them
    for (i, proj), (A, B) in adapters.items():
        lin = getattr(base.llm.layers[i].attn, {"q_proj": "wq", "v_proj": "wv"}[proj])
        lin.register_forward_hook(lambda mod, inp, out, A=A, B=B: out + (alpha / r) * (inp[0] @ A.T @ B.T))
    tokens = torch.randint(0, 200, (1, 20))
    with torch.no_grad():
        assert rel_err(merged.llm(tokens), base.llm(tokens)) <= 1e-4
        assert rel_err(base.llm(tokens), weights.load_video_llm(plain).llm(tokens)) > 1e-2  # the adapter matters


def test_lora_without_alpha_is_an_error(llava, tmp_path):
    plain, _, _ = llava
    d = tmp_path / "lora"
    shutil.copytree(plain, d)
    t = load_file(d / "model.safetensors")
    t["language_model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(2, 48)
    t["language_model.model.layers.0.self_attn.q_proj.lora_B.weight"] = torch.zeros(48, 2)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(weights.CheckpointError, match="no lora_alpha"):
        weights.load_video_llm(d)


# ---- the command line -------------------------------------------------------------------------------------------


def cli(*args):
    return subprocess.run([sys.executable, "-m", "minivtp", "answer", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def frames_folder(path, n, size=(30, 40)):
    path.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        png.write_png(path / f"{i:03d}.png", torch.randint(0, 256, (*size, 3), dtype=torch.uint8, generator=g))
    return path


def test_cli_answers_with_llm_vtp(llava, tmp_path):
    _, pllava, _ = llava
    video = frames_folder(tmp_path / "frames", 6)
    out = cli("--weights", pllava, "--video", video, "--question", "What is the man doing?", "--alpha", 0.1,
              "--layer", 2, "--max-new-tokens", 5, "--device", "cpu", "--dtype", "float32", "--json",
              "--heatmap", tmp_path / "kept.png")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["video_tokens"] == 8 and d["kept_video_tokens"] == 2  # ceil(0.1 * 4) = 1 per pooled frame
    assert d["kept_ratio"] == 0.25 and d["cache_rows"] == d["prompt_rows"] - 6
    assert 1 <= d["new_tokens"] <= 5 and d["prefill_s"] > 0
    assert png.read_png_size(tmp_path / "kept.png")[0] > 100
    assert "loading shard 1/1" in out.stderr
    # the answer is the one generate() gives in this process for the same frames, prompt and method, decoded
    from minivtp.generate import generate
    from minivtp.hosts.prompts import build_prompt
    from minivtp.tokenizer import Tokenizer
    from minivtp.hosts.frames import read_frames
    model, tok = weights.load_video_llm(pllava), Tokenizer.from_file(pllava)
    frames, _ = read_frames(video, model.frames)
    ids = torch.tensor(tok.encode(build_prompt(model.arrangement, "What is the man doing?")))
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, preprocess(frames, model.vision.cfg.image_size))
    ref = generate(model.llm, embeds, 5, video=span, alpha=0.1, layer=2, eos_id=tok.eos)
    words = tok.decode([t for t in ref.tokens.tolist() if t != tok.eos], skip_special=True).strip()
    assert words and d["answer"] == words, (d["answer"], words)
    assert d["new_tokens"] == len(ref.tokens)
    assert d["cache_rows"] == ref.cache_len and d["prompt_rows"] == ref.prompt_len


def test_cli_plain_text_output_and_repeated_frames(llava, tmp_path):
    _, pllava, _ = llava
    frames = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)}, frames)
    out = cli("--weights", pllava, "--video", frames, "--question", "Why?", "--layer", 1, "--max-new-tokens", 3,
              "--device", "cpu", "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    assert "the video has 2 frames, fewer than the model's 4: frames are repeated" in out.stderr
    assert "kept 2 of 8 video tokens (25.0%)" in out.stdout and "ms/token" in out.stdout


@pytest.mark.parametrize("case", ["unreadable", "too long", "not a video LLM", "missing file"])
def test_cli_bad_input_one_line_nonzero(llava, tiny_llama, tmp_path, case):
    _, pllava, _ = llava
    video = frames_folder(tmp_path / "frames", 4)
    args = ["--weights", pllava, "--video", video, "--question", "Why?", "--device", "cpu", "--layer", 1]
    want = {"unreadable": "not a readable safetensors file", "too long": "would exceed the model's 512 positions",
            "not a video LLM": "is not a video LLM minivtp knows", "missing file": "no such file or folder"}[case]
    if case == "unreadable":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"this is not a video")
        args[3] = bad
    elif case == "too long":
        args += ["--max-new-tokens", 600]
    elif case == "not a video LLM":
        args[1] = tiny_llama[0]
    else:
        args[3] = tmp_path / "nowhere.mp4"
    out = cli(*args)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and want in errors[0], out.stderr


def test_tarsier_config_loads_with_its_frame_layout(llava, tmp_path):
    plain, _, _ = llava
    d = tmp_path / "tarsier"
    shutil.copytree(plain, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(image_newline_idx=5, image_new_idx=6)
    (d / "config.json").write_text(json.dumps(cfg))
    model = weights.load_video_llm(d)
    assert model.arrangement == "tarsier" and model.frames == 8
    assert model.tokens_per_frame() == GRID * (GRID + 1) + 1
    with torch.no_grad():
        rows, T = model.video_tokens(torch.randn(2, 3, 28, 28))
    assert T == 2 and rows.shape[0] == 2 * 21
    emb = model.llm.embed.weight
    torch.testing.assert_close(rows[GRID], emb[5])  # after the first row of 4 patches: the newline embedding
    torch.testing.assert_close(rows[20], emb[6])  # the frame's last token: the separator


def test_weights_cli_describes_a_video_llm(llava):
    _, pllava, _ = llava
    out = subprocess.run([sys.executable, str(ROOT / "weights.py"), str(pllava)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "video        pllava: 4 frames, 4 tokens per frame" in out.stdout
    assert "vision       CLIP ViT, 3 layers, width 32" in out.stdout


def test_video_file_without_pyav_names_the_extra(tmp_path, monkeypatch):
    from minivtp.hosts.frames import read_frames
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"needs the optional package 'av': pip install av"):
        read_frames(clip, 4)


def test_preprocess_is_close_to_clip_image_processor():
    Image = pytest.importorskip("PIL.Image")
    yy, xx = torch.meshgrid(torch.arange(240), torch.arange(320), indexing="ij")
    img = torch.stack([xx * 255 / 320, yy * 255 / 240, ((xx + yy) % 64) * 4.0], -1).clamp(0, 255).to(torch.uint8)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ref = processor(images=[Image.fromarray(img.numpy())], return_tensors="pt")["pixel_values"]
    ours = preprocess(img[None], 336)
    # PIL's bicubic and torch's antialiased bicubic differ at sharp edges (max ~0.24 here), not on average:
    # 0.02 mean absolute difference in CLIP-normalised units is a 0.5% shift of a 0..255 pixel
    assert ours.shape == ref.shape and (ours - ref).abs().mean() < 0.02


def released_layout(plain, d, alpha_file=None):
    """PLLaVA's released layout: the LLM saved PEFT-wrapped (base_model.model., base_layer, .default.) with
    unmerged adapters on q and v; adapter_config.json only when alpha_file is given."""
    shutil.copytree(plain, d)
    t = load_file(d / "model.safetensors")
    out, g = {}, torch.Generator().manual_seed(5)
    for name, w in t.items():
        if name.startswith("language_model."):
            rest = name[len("language_model."):]
            m = re.match(r"model\.layers\.(\d+)\.self_attn\.(q|v)_proj\.weight", rest)
            if m:
                p = f"language_model.base_model.model.model.layers.{m.group(1)}.self_attn.{m.group(2)}_proj"
                out[p + ".base_layer.weight"] = w
                out[p + ".lora_A.default.weight"] = torch.randn(2, w.shape[1], generator=g) * 0.3
                out[p + ".lora_B.default.weight"] = torch.randn(w.shape[0], 2, generator=g) * 0.3
                continue
            name = "language_model.base_model.model." + rest
        out[name] = w
    save_file(out, d / "model.safetensors", metadata={"format": "pt"})
    if alpha_file is not None:
        (d / "adapter_config.json").write_text(json.dumps({"lora_alpha": alpha_file, "r": 2}))
    return d


def test_cli_lora_alpha_for_a_released_directory(llava, tmp_path):
    d = released_layout(llava[1], tmp_path / "pllava-released")
    frames = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)}, frames)
    args = ["--weights", d, "--video", frames, "--question", "Why?", "--layer", 1, "--max-new-tokens", 3,
            "--device", "cpu", "--json"]
    out = cli(*args)
    assert out.returncode == 2 and "give --lora-alpha on the command line" in out.stderr
    out = cli(*args, "--lora-alpha", 4)
    assert out.returncode == 0, out.stderr
    merged = weights.load_video_llm(d, lora_alpha=4)
    assert merged.load_info["lora_merged"]["lora_alpha"] == 4
    with_file = weights.load_video_llm(released_layout(llava[1], tmp_path / "with-config", alpha_file=4))
    for a, b in zip(merged.parameters(), with_file.parameters()):
        assert torch.equal(a, b)  # --lora-alpha 4 is adapter_config.json's lora_alpha 4


def test_a_hugging_face_cache_snapshot_of_symlinks_loads(llava, tmp_path):
    # hub downloads keep the files in blobs/ and the snapshot directory holds symlinks to them
    src = llava[1]
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "0123abcd"
    blobs.mkdir()
    snap.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, blobs / f"blob-{f.name}")
        (snap / f.name).symlink_to(blobs / f"blob-{f.name}")
    model = weights.load_video_llm(snap)
    ref = weights.load_video_llm(src)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_cli_with_only_a_tokenizer_model(tmp_path):
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece trains the tokenizer.model")
    from conftest import TOKENIZER_CORPUS
    (tmp_path / "corpus.txt").write_text("\n".join(TOKENIZER_CORPUS))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
                                   vocab_size=400, model_type="bpe", normalization_rule_name="identity",
                                   character_coverage=1.0, byte_fallback=True, user_defined_symbols=["<image>"],
                                   minloglevel=2)
    image_id = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model")).piece_to_id("<image>")
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=28, patch_size=7)
    text = transformers.LlamaConfig(vocab_size=400, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    d = tmp_path / "llava-sp"
    transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_id)).save_pretrained(d)
    shutil.copy(tmp_path / "tokenizer.model", d)
    assert not (d / "tokenizer.json").exists()
    frames = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)}, frames)
    out = cli("--weights", d, "--video", frames, "--question", "What is it?", "--layer", 1, "--max-new-tokens", 3,
              "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["new_tokens"] >= 1
