"""LLaVA-OneVision and LLaVA-Video (minivtp/hosts/) against transformers, on tiny checkpoints transformers wrote:
the SigLIP tower and its preprocessing, the whole model's logits on video input, LLaVA-NeXT's own checkpoint
layout (renamed from the same tensors) and its grid newlines, pruning at alpha = 1, and the command line."""

import json
import re
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize, transformers, write_llama_tokenizer
from safetensors.torch import load_file, save_file

import weights
from minivtp.generate import Method, generate
from minivtp.hosts import siglip
from minivtp.hosts.llava_onevision import LlavaOnevision, pooled_grid, sample_linspace
from minivtp.rivals import PruMergePlus
from minivtp.vtp import n_keep

ROOT = Path(__file__).resolve().parents[1]
SIZE, PATCH = 35, 7  # a 5 x 5 patch grid: odd, so ceil(5/2) = 3 and floor(5/2) = 2 differ
POOLED = 3


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def siglip_config(**kw):
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=SIZE,
                patch_size=PATCH, vision_use_head=False)
    return transformers.SiglipVisionConfig(**dict(base, **kw))


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    """(directory, transformers model, tokenizer stand-in ids): a GQA Qwen2 inside, the stand-in tokenizer beside."""
    from tokenizers import AddedToken, Tokenizer
    root = tmp_path_factory.mktemp("onevision")
    tok_dir = write_llama_tokenizer(root)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<video>", special=True, normalized=False)])
    image_id, video_id = tok.token_to_id("<image>"), tok.token_to_id("<video>")
    text = transformers.Qwen2Config(vocab_size=video_id + 1, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    cfg = transformers.LlavaOnevisionConfig(vision_config=siglip_config(), text_config=text, image_token_index=image_id,
                                            video_token_index=video_id, vision_feature_layer=-1,
                                            vision_feature_select_strategy="full")
    torch.manual_seed(0)
    hf = randomize(transformers.LlavaOnevisionForConditionalGeneration(cfg), seed=3, std=0.3).eval()
    d = root / "llava-onevision"
    hf.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    return d, hf, video_id


def hf_video_ids(ids, video_id, n):  # transformers wants one placeholder per video feature, newline included
    i = (ids == video_id).nonzero().item()
    return torch.cat([ids[:i], torch.full((n,), video_id), ids[i + 1 :]])


# ---- the tower -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [-1, -2, 0, 2])
def test_siglip_hidden_states_equal_transformers(layer):
    torch.manual_seed(1)
    hf = randomize(transformers.SiglipVisionModel(siglip_config()), seed=1, std=0.3).eval()
    tower = siglip.SiglipTower(siglip.SiglipConfig.from_hf(hf.config.to_dict()))
    sd = {siglip.siglip_to_ours(re.sub(r"^vision_model\.", "", k)): v for k, v in hf.state_dict().items()}
    tower.load_state_dict(sd, strict=True)
    px = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref = hf(px, output_hidden_states=True).hidden_states[layer]  # (T, 25, 32)
        ours = tower(px, layer)
    assert ours.shape == (2, 25, 32) and ref.abs().max() > 1
    assert rel_err(ours, ref) <= 1e-5  # float32 both sides, the same operations: reassociation only


def test_siglip_rejects_a_wrong_image_size_and_layer():
    tower = siglip.SiglipTower(siglip.SiglipConfig(dim=8, n_layers=2, n_heads=2, hidden_dim=16, image_size=14, patch_size=7))
    with pytest.raises(ValueError, match=r"pixels must be \(T, 3, 14, 14\) for this tower, got \(1, 3, 28, 28\)"):
        tower(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="vision feature layer 3 is outside -3..2"):
        tower(torch.zeros(1, 3, 14, 14), layer=3)


def test_siglip_preprocess_is_close_to_transformers_image_processor():
    Image = pytest.importorskip("PIL.Image")
    yy, xx = torch.meshgrid(torch.arange(240), torch.arange(320), indexing="ij")
    img = torch.stack([xx * 255 / 320, yy * 255 / 240, ((xx + yy) % 64) * 4.0], -1).clamp(0, 255).to(torch.uint8)
    processor = transformers.SiglipImageProcessorPil(size={"height": 384, "width": 384})
    ref = processor(images=[Image.fromarray(img.numpy())], return_tensors="pt")["pixel_values"]
    ours = siglip.preprocess(img[None], 384)
    # the whole 4:3 frame squeezed to a square (no crop): a crop would shift every column and fail this by far.
    # PIL's bicubic and torch's antialiased bicubic differ at sharp edges, not on average (as for CLIP's test)
    assert ours.shape == ref.shape == (1, 3, 384, 384) and (ours - ref).abs().mean() < 0.02
    white = siglip.preprocess(torch.full((1, 9, 5, 3), 255, dtype=torch.uint8), 14)
    torch.testing.assert_close(white, torch.ones(1, 3, 14, 14))  # (1 - 0.5) / 0.5


# ---- the whole model -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 2, 3])
def test_onevision_logits_equal_transformers_on_video(onevision, T):
    d, hf, video_id = onevision
    model = weights.load_video_llm(d)
    assert isinstance(model, LlavaOnevision) and model.tokens_per_frame() == POOLED * POOLED
    px = torch.randn(T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(T))
    ids = torch.tensor([1, 40, 41, video_id, 42, 43, 44, 45, 46])
    with torch.no_grad():
        ref = hf(input_ids=hf_video_ids(ids, video_id, T * POOLED**2 + 1)[None], pixel_values_videos=px[None]).logits
        embeds, span, _ = model.prompt(ids, px)
        ours = model.llm.forward_embeds(embeds)
    assert (span.start, span.frames, span.tokens_per_frame) == (3, T, POOLED * POOLED)
    torch.testing.assert_close(embeds[0, span.end], model.image_newline)  # the newline row: after the span
    assert ours.shape == ref.shape and ref.abs().max() > 1
    assert rel_err(ours, ref) <= 1e-5  # float32 both sides, same operations in the same order


def test_onevision_in_bf16_matches_transformers_in_bf16(onevision):
    d, _, video_id = onevision
    hf16 = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(d, dtype=torch.bfloat16).eval()
    model = weights.load_video_llm(d, dtype=torch.bfloat16)
    px = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    ids = torch.tensor([1, 40, video_id, 42, 43, 44])
    with torch.no_grad():
        ref = hf16(input_ids=hf_video_ids(ids, video_id, 2 * POOLED**2 + 1)[None],
                   pixel_values_videos=px[None].bfloat16()).logits.float()
        embeds, _, _ = model.prompt(ids, px.bfloat16())
        ours = model.llm.forward_embeds(embeds)
    # both round to bf16 at the same places; 2e-2 of the largest logit allows for the vision tower's 3 layers
    # and the pooling in bf16 before the decoder (the LLaMA test's 1e-2 is for the decoder alone)
    assert rel_err(ours, ref) <= 2e-2


def test_pruned_generation_at_alpha_1_equals_unpruned_and_alpha_below_keeps_per_frame(onevision):
    d, _, video_id = onevision
    model = weights.load_video_llm(d)
    T = 3
    px = torch.randn(T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))
    ids = torch.tensor([1, 40, video_id, 42, 43, 44, 45])
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, px)
        plain = generate(model.llm, embeds, 6)
        full = generate(model.llm, embeds, 6, video=span, method=Method(alpha=1.0, layer=2))
        pruned = generate(model.llm, embeds, 6, video=span, method=Method(alpha=0.3, layer=2))
    assert torch.equal(plain.tokens, full.tokens) and torch.allclose(plain.logits, full.logits, atol=1e-5)
    assert pruned.kept.numel() == T * n_keep(0.3, POOLED * POOLED)
    assert pruned.kept.min() >= span.start and pruned.kept.max() < span.end  # the newline row is never ranked
    assert pruned.cache_len == embeds.shape[1] - (T * POOLED * POOLED - pruned.kept.numel())


def test_prumerge_says_why_it_does_not_apply(onevision):
    d, _, video_id = onevision
    model = weights.load_video_llm(d)
    with pytest.raises(ValueError, match="SigLIP has no class token, so PruMerge\\+ does not apply"):
        PruMergePlus().prompt(model, torch.tensor([1, video_id, 5]), torch.zeros(1, 3, SIZE, SIZE))


def test_one_placeholder_exactly(onevision):
    d, _, video_id = onevision
    model = weights.load_video_llm(d)
    with pytest.raises(ValueError, match=f"exactly one video placeholder \\(token {video_id}, <video>\\); it holds 2"):
        model.prompt(torch.tensor([1, video_id, 5, video_id, 6]), torch.zeros(1, 3, SIZE, SIZE))


# ---- LLaVA-NeXT's own layout (lmms-lab/LLaVA-Video-7B-Qwen2) --------------------------------------------------


def llava_next_layout(src, d, **mm):
    """The same tensors under LLaVA-NeXT's names (the inverse of transformers' conversion script's mapping), with a
    llava_qwen config.json: the Qwen2 config at the top, mm_* keys beside it."""
    d.mkdir()
    out = {}
    for name, t in load_file(src / "model.safetensors").items():
        if name.startswith("language_model.model."):
            name = "model." + name[len("language_model.model."):]
        elif name == "language_model.lm_head.weight":
            name = "lm_head.weight"
        elif name == "image_newline":
            name = "model.image_newline"
        elif name.startswith("vision_tower."):
            name = "model.vision_tower.vision_tower.vision_model." + name[len("vision_tower."):]
        elif name.startswith("multi_modal_projector.linear_"):
            n = name[len("multi_modal_projector.linear_")]
            name = f"model.mm_projector.{0 if n == '1' else 2}." + name.rsplit(".", 1)[1]
        out[name] = t
    save_file(out, d / "model.safetensors", metadata={"format": "pt"})
    hf = json.loads((src / "config.json").read_text())
    cfg = dict(hf["text_config"], model_type="llava_qwen", architectures=["LlavaQwenForCausalLM"],
               mm_vision_tower="google/siglip-so400m-patch14-384", mm_projector_type="mlp2x_gelu",
               mm_patch_merge_type="spatial_unpad", mm_vision_select_layer=-2, vision_config=hf["vision_config"], **mm)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    return d


def test_llava_next_layout_with_onevision_settings_equals_transformers(onevision, tmp_path):
    d, hf, video_id = onevision
    nxt = llava_next_layout(d, tmp_path / "next", mm_newline_position="one_token", mm_spatial_pool_mode="bilinear")
    model = weights.load_video_llm(nxt)
    assert model.image_token == -200 and model.placeholder == "<image>" and model.frames == 64
    T = 2
    px = torch.randn(T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    ids = torch.tensor([1, 40, 41, video_id, 42, 43, 44])
    with torch.no_grad():
        ref = hf(input_ids=hf_video_ids(ids, video_id, T * POOLED**2 + 1)[None], pixel_values_videos=px[None]).logits
        embeds, _, _ = model.prompt(torch.where(ids == video_id, -200, ids), px)
        assert rel_err(model.llm.forward_embeds(embeds), ref) <= 1e-5


def test_llava_video_grid_newlines_and_average_pooling_as_llava_arch_writes_them(onevision, tmp_path):
    d, hf, video_id = onevision
    nxt = llava_next_layout(d, tmp_path / "video", mm_newline_position="grid", mm_spatial_pool_mode="average")
    model = weights.load_video_llm(nxt)
    h = pooled_grid(SIZE // PATCH, "average")
    assert model.arrangement == "llava-video" and h == 2 and model.tokens_per_frame() == h * (h + 1)
    T = 3
    px = torch.randn(T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    ids = torch.tensor([1, 40, -200, 42, 43, 44])
    with torch.no_grad():
        # llava_arch.py, literally: get_2dPool (avg_pool2d, stride 2), then add_token_per_grid's permutes
        feats = hf.model.multi_modal_projector(hf.model.vision_tower(px, output_hidden_states=True).hidden_states[-1])
        g = SIZE // PATCH
        x = F.avg_pool2d(feats.view(T, g, g, -1).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).reshape(T, h * h, -1)
        x = x.view(T, 1, h, h, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # (C, T*h, w)
        x = torch.cat([x, hf.model.image_newline[:, None, None].expand(*x.shape[:-1], 1)], dim=-1)
        video = x.flatten(1, 2).transpose(0, 1)  # (T*h*(w+1), C)
        emb = hf.model.language_model.embed_tokens
        ref_embeds = torch.cat([emb(ids[:2]), video, emb(ids[3:])])[None]
        ref = hf.lm_head(hf.model.language_model(inputs_embeds=ref_embeds).last_hidden_state)
        embeds, span, _ = model.prompt(ids, px)
        ours = model.llm.forward_embeds(embeds)
    assert (span.start, span.frames, span.tokens_per_frame) == (2, T, 6) and span.end == embeds.shape[1] - 3
    torch.testing.assert_close(embeds[0, 2 + h], hf.model.image_newline)  # after the first row of a frame
    assert rel_err(ours, ref) <= 1e-5


def test_llava_next_layout_refuses_what_it_does_not_know(onevision, tmp_path):
    d, _, _ = onevision
    nxt = llava_next_layout(d, tmp_path / "faster", mm_newline_position="grid", add_faster_video=True)
    with pytest.raises(weights.CheckpointError, match="add_faster_video is true"):
        weights.load_video_llm(nxt)


def test_frame_sampling_is_linspace():
    assert sample_linspace(10, 4) == [0, 3, 6, 9]  # np.linspace(0, 9, 4, dtype=int) = [0, 3, 6, 9]
    np = pytest.importorskip("numpy")
    for n_available, n in [(100, 32), (7, 32), (300, 64), (65, 64)]:
        assert sample_linspace(n_available, n) == np.linspace(0, n_available - 1, n, dtype=int).tolist()


# ---- the command line ------------------------------------------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, "-m", "minivtp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=180)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    f = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (8, 40, 50, 3), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(2))}, f)
    return f


@pytest.mark.parametrize("method, extra, kept", [("llm-vtp", ["--alpha", 0.3, "--layer", 2], 4 * 3),
                                                 ("fastv", ["--alpha", 0.3, "--layer", 2], math.ceil(0.3 * 36)),
                                                 ("look-m", [], None)])
def test_cli_answer_on_onevision(onevision, clip, tmp_path, method, extra, kept):
    d, _, _ = onevision
    cfg = json.loads((d / "config.json").read_text())
    local = tmp_path / "ov4"  # 4 frames a video, so the test is quick
    local.mkdir()
    for f in d.iterdir():
        (local / f.name).symlink_to(f)
    (local / "config.json").unlink()
    (local / "config.json").write_text(json.dumps(dict(cfg, num_frames=4)))
    out = run("answer", "--weights", local, "--video", clip, "--question", "What is it?", "--method", method, *extra,
              "--max-new-tokens", 3, "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["video_tokens"] == 4 * POOLED * POOLED and r["new_tokens"] >= 1
    if kept is None:  # Look-M keeps rows per layer, after a full prefill: every layer's cache is smaller
        assert max(r["cache_rows_per_layer"]) < r["prompt_rows"]
    else:
        assert r["kept_video_tokens"] == kept
    if method == "llm-vtp":  # Eq. 7-8: layers 1..M forget the dropped rows too
        assert r["cache_rows"] == r["prompt_rows"] - (36 - kept)


def test_cli_prumerge_is_one_clear_error(onevision, clip):
    out = run("answer", "--weights", onevision[0], "--video", clip, "--question", "Why?", "--method", "prumerge+",
              "--device", "cpu")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "SigLIP has no class token" in errors[0], out.stderr


def test_eval_on_llava_video_layout(onevision, clip, tmp_path):
    d, _, _ = onevision
    nxt = llava_next_layout(d, tmp_path / "video", mm_newline_position="grid", mm_spatial_pool_mode="average",
                            num_frames=4)
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"Action": [
        {"video": clip.name, "question": "What happens?", "candidates": ["a cat", "a dog"], "answer": "a dog"},
        {"video": clip.name, "question": "Who is there?", "candidates": ["nobody", "a man", "two"], "answer": "two"}]}))
    out = run("eval", "--weights", nxt, "--questions", questions, "--videos", clip.parent, "--out", tmp_path / "r.jsonl",
              "--alpha", 0.5, "--layer", 2, "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["questions"] == 2 and s["errors"] == 0
    assert s["mean_kept_ratio"] == pytest.approx(n_keep(0.5, 6) / 6)  # per frame, newline rows ranked with the rest


def test_weights_cli_describes_the_host(onevision):
    out = subprocess.run([sys.executable, str(ROOT / "weights.py"), str(onevision[0])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Qwen2 decoder inside" in out.stdout and "vision       SigLIP, 3 layers, width 32" in out.stdout
    assert "video        llava-onevision: 32 frames, 9 tokens per frame" in out.stdout


def test_bench_runs_at_a_tiny_shape_and_answers_as_transformers_generates(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("onevision_e2e", ROOT / "bench" / "onevision_e2e.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(tiny=True, out_dir=tmp_path, tokens=(6,), repeats=2)
    # the same weights in both: minivtp's greedy answer, decoded from its own cache, is transformers' generate's
    assert res["transformers"]["default | 6"]["tokens_equal_to_minivtp_unpruned"] == 6
    assert len(res["minivtp"]) == len(bench.SETTINGS)
    pruned = res["minivtp"]["llm-vtp a0.1 M10 eager | 6"]
    assert pruned["cache_rows"] == res["prompt_rows"] - (4 * 4 - 4 * n_keep(0.1, 4))
    assert json.loads((tmp_path / "onevision_e2e.json").read_text())["frames"] == 4


def test_the_saved_processor_normalisation_is_used(onevision, tmp_path):
    d, _, _ = onevision
    local = tmp_path / "with-processor"
    local.mkdir()
    for f in d.iterdir():
        (local / f.name).symlink_to(f)
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    (local / "video_preprocessor_config.json").write_text(json.dumps({"image_mean": clip_mean, "image_std": clip_std}))
    model = weights.load_video_llm(local)
    px = model.preprocess(torch.full((1, 8, 8, 3), 255, dtype=torch.uint8))
    torch.testing.assert_close(px[0, :, 0, 0], (1 - torch.tensor(clip_mean)) / torch.tensor(clip_std))
    assert weights.load_video_llm(d).mean == siglip.SIGLIP_MEAN  # no processor file: SigLIP's 0.5


def test_cli_reads_a_byte_level_tokenizer_and_checks_its_placeholder(onevision, clip, tmp_path):
    """Qwen2's kind of tokenizer.json (byte-level BPE) is read by minivtp.tokenizer; here its <video> is not the
    model's video token, which is one error line naming both ids (not a wrong prompt)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from conftest import TOKENIZER_CORPUS
    d, _, _ = onevision
    local = tmp_path / "qwen-tokenizer"
    local.mkdir()
    for f in d.iterdir():
        if f.name != "tokenizer.json":
            (local / f.name).symlink_to(f)
    tok = Tokenizer(models.BPE())  # the shape of Qwen2's tokenizer.json: ByteLevel pre-tokenizer and decoder
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TOKENIZER_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<video>"]))
    tok.save(str(local / "tokenizer.json"))
    out = run("answer", "--weights", local, "--video", clip, "--question", "Why?", "--device", "cpu")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    video_id = json.loads((d / "config.json").read_text())["video_token_index"]
    assert out.returncode == 2 and len(errors) == 1, out.stderr
    assert f"the tokenizer's <video> is {tok.token_to_id('<video>')}, the model's video token is {video_id}" in errors[0]


@pytest.mark.parametrize("layout", ["onevision", "llava-video"])
def test_explore_page_places_each_video_token_on_the_pooled_grid(onevision, clip, tmp_path, layout):
    import re as regex
    d, _, _ = onevision
    cfg = json.loads((d / "config.json").read_text())
    if layout == "onevision":
        w = tmp_path / "ov2"
        w.mkdir()
        for f in d.iterdir():
            if f.name != "config.json":
                (w / f.name).symlink_to(f)
        (w / "config.json").write_text(json.dumps(dict(cfg, num_frames=2)))
    else:
        w = llava_next_layout(d, tmp_path / "video", mm_newline_position="grid", mm_spatial_pool_mode="average",
                              num_frames=2)
    out = tmp_path / "p.html"
    r = subprocess.run([sys.executable, "-m", "minivtp", "explore", "--weights", str(w), "--video", str(clip),
                        "--question", "What is it?", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(regex.search(r"const data = (\{.*?\});\n", out.read_text(), regex.S).group(1).replace("<\\/", "</"))
    if layout == "onevision":  # 3 x 3 pooled tokens a frame, row by row
        assert data["Nv"] == 9 and data["grid"] == [3, 3] and data["cells"][4] == [1, 1]
    else:  # 2 x 2 average-pooled tokens, each row followed by its newline, which has no cell
        assert data["Nv"] == 6 and data["grid"] == [2, 2]
        assert data["cells"] == [[0, 0], [0, 1], None, [1, 0], [1, 1], None]
    assert data["T"] == 2 and len(data["scores"]["max"][0]) == 2 * data["Nv"]


def test_cli_heatmap_on_llava_video_grid_layout(onevision, clip, tmp_path):
    from minivtp.lab import png
    nxt = llava_next_layout(onevision[0], tmp_path / "video", mm_newline_position="grid",
                            mm_spatial_pool_mode="average", num_frames=2)
    out = run("answer", "--weights", nxt, "--video", clip, "--question", "What?", "--alpha", 0.5, "--layer", 2,
              "--max-new-tokens", 2, "--device", "cpu", "--json", "--heatmap", tmp_path / "kept.png")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["video_tokens"] == 2 * 6 and r["kept_video_tokens"] == 2 * 3  # newline rows ranked with the patches
    assert png.read_png_size(tmp_path / "kept.png")[0] > 100


def test_the_worked_examples_in_the_host_files_run():
    import doctest
    from minivtp.hosts import prompts
    from minivtp.hosts import llava_onevision
    for module in (siglip, llava_onevision, prompts):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


def test_a_tied_head_as_in_onevision_0_5b_equals_transformers(tmp_path):
    text = transformers.Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                    num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                                    tie_word_embeddings=True)
    cfg = transformers.LlavaOnevisionConfig(vision_config=siglip_config(num_hidden_layers=2), text_config=text,
                                            image_token_index=62, video_token_index=63)
    torch.manual_seed(0)
    hf = randomize(transformers.LlavaOnevisionForConditionalGeneration(cfg), seed=4, std=0.3).eval()
    hf.save_pretrained(tmp_path)
    model = weights.load_video_llm(tmp_path)
    assert model.llm.output.weight is model.llm.embed.weight
    px = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    ids = torch.tensor([1, 5, 63, 7, 8])
    with torch.no_grad():
        hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path).eval()  # as saved
        ref = hf(input_ids=hf_video_ids(ids, 63, 2 * POOLED**2 + 1)[None], pixel_values_videos=px[None]).logits
        embeds, _, _ = model.prompt(ids, px)
        assert rel_err(model.llm.forward_embeds(embeds), ref) <= 1e-5
