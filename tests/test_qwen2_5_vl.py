"""Qwen2.5-VL (minivtp/hosts/qwen2_5_vl.py, qwen_vit.py) against transformers, on tiny checkpoints transformers
wrote: the ViT with its windows, the preprocessing, get_rope_index's positions, the whole model's logits on video
(several frame counts, frames that are not square, GQA), pruning with 3D positions, and the command line.

Float32 at 1e-4: the same operations in a different order (attention kernels, a Conv3d against a matrix product),
so float32 rounding apart (about 1e-6), while a wrong window, rotation or position moves logits by 1e-1 or more."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import randomize, transformers, write_llama_tokenizer
from safetensors.torch import save_file

import weights
from minivtp.generate import Method, generate, prefill
from minivtp.rivals import FastV, PruMergePlus
from minivtp.hosts import qwen2_5_vl
from minivtp.hosts.qwen2_5_vl import chat_prompt, sample_indices, smart_resize
from minivtp.hosts.qwen_vit import QwenViT, QwenViTConfig, patchify, window_order

ROOT = Path(__file__).resolve().parents[1]
# windows of 56 px = 2 x 2 merge blocks; blocks 1 and 3 attend to whole frames, 0 and 2 inside windows
VISION = dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14,
              temporal_patch_size=2, spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1, 3],
              tokens_per_second=2)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]


def vision_config():
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    return Qwen2_5_VLVisionConfig(**VISION)


def ours_vit(hf_visual):
    model = QwenViT(QwenViTConfig.from_hf(hf_visual.config.to_dict()))
    state = {qwen2_5_vl.transformers_to_ours("visual." + k)[len("vision."):]: v
             for k, v in hf_visual.state_dict().items()}
    model.load_state_dict(state)
    return model.eval()


@pytest.mark.parametrize("grid", [(1, 10, 6), (2, 6, 10), (3, 6, 4)])
def test_vit_equals_transformers_with_several_windows(grid):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    hf = randomize(Qwen2_5_VisionTransformerPretrainedModel(vision_config()), seed=1, std=0.3).eval()
    ours = ours_vit(hf)
    t, h, w = grid
    _, windows = window_order(grid, ours.cfg)
    assert len(windows) > t and len(set(windows)) > 1  # several windows a frame, some cut short at the edge
    patches = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(patches, grid_thw=torch.tensor([grid])).pooler_output
        got = ours(patches, grid)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_smart_resize_and_sampling_equal_the_processors():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs
    for h, w in [(240, 320), (50, 40), (1080, 1920), (28, 2000), (333, 777), (20, 3000)]:
        for lo, hi in [(qwen2_5_vl.MIN_PIXELS, qwen2_5_vl.MAX_PIXELS), (56 * 56, 28 * 28 * 1280), (3136, 12544)]:
            assert smart_resize(h, w, 28, lo, hi) == theirs(h, w, 28, lo, hi)
    # sample_frames(num_frames=n): round n to the temporal group, then arange(0, total, total / n).int()
    # (transformers/models/qwen2_vl/video_processing_qwen2_vl.py; the module needs torchvision to import)
    assert sample_indices(10, 4) == [0, 2, 5, 7] and sample_indices(100, 8) == [0, 12, 25, 37, 50, 62, 75, 87]
    assert sample_indices(33, 5) == [0, 8, 16, 24] and len(sample_indices(33, 7)) == 8  # Python's round: 2.5 -> 2
    with pytest.raises(ValueError, match="fewer than the 16"):
        sample_indices(10, 16)


def test_preprocess_equals_the_image_processor_on_frames_of_the_target_size():
    """A frame already of smart_resize's size is not resampled, so normalisation and the patch order are compared
    exactly with transformers' PIL image processor (an image is a one-group video: the frame twice)."""
    np = pytest.importorskip("numpy")
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    frame = torch.randint(0, 256, (56, 84, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 16)
    want = proc(images=[Image.fromarray(frame.numpy())], return_tensors="pt")
    host = qwen2_5_vl.Qwen25VL.__new__(qwen2_5_vl.Qwen25VL)
    torch.nn.Module.__init__(host)
    host.vision = QwenViT.__new__(QwenViT)
    host.vision.cfg = QwenViTConfig()
    host.mean, host.std = qwen2_5_vl.CLIP_MEAN, qwen2_5_vl.CLIP_STD
    host.min_pixels, host.max_pixels = 56 * 56, 28 * 28 * 16
    pixels = host.preprocess(frame[None])  # one frame: padded to a group of two
    patches, grid = patchify(pixels, host.vision.cfg)
    assert list(grid) == want["image_grid_thw"][0].tolist() == [1, 4, 6]
    torch.testing.assert_close(patches, torch.as_tensor(np.asarray(want["pixel_values"])), rtol=0, atol=1e-5)


# ---- the whole model ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """(directory, transformers model, token ids of the specials): a GQA decoder with M-RoPE, the tower above."""
    from tokenizers import AddedToken, Tokenizer
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig, Qwen2_5_VLTextConfig
    root = tmp_path_factory.mktemp("qwen25vl")
    tok = Tokenizer.from_file(str(write_llama_tokenizer(root) / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    text = Qwen2_5_VLTextConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96,
                                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=None,
                                eos_token_id=ids["<|im_end|>"],
                                rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]))
    cfg = Qwen2_5_VLConfig(text_config=text.to_dict(), vision_config=vision_config().to_dict(),
                           video_token_id=ids["<|video_pad|>"], image_token_id=ids["<|image_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    hf = randomize(transformers.Qwen2_5_VLForConditionalGeneration(cfg), seed=3, std=0.3).eval()
    d = root / "qwen2.5-vl"
    hf.save_pretrained(d)
    tok.save(str(d / "tokenizer.json"))
    return d, hf, ids


def frames_of(T, H, W, seed=0):
    return torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def prompt_ids(ids, n_before=5, n_after=7):
    g = torch.Generator().manual_seed(n_before)
    return torch.cat([torch.randint(3, 200, (n_before,), generator=g),
                      torch.tensor([ids["<|vision_start|>"], ids["<|video_pad|>"], ids["<|vision_end|>"]]),
                      torch.randint(3, 200, (n_after,), generator=g)])


def hf_inputs(host, ids, pixels, token_ids):
    """What transformers' processor gives the model for the same prompt: one <|video_pad|> per merged token."""
    patches, grid = patchify(pixels, host.vision.cfg)
    n = grid[0] * grid[1] * grid[2] // 4
    i = (ids == token_ids["<|video_pad|>"]).nonzero().item()
    full = torch.cat([ids[:i], ids[i : i + 1].repeat(n), ids[i + 1 :]])[None]
    return dict(input_ids=full, pixel_values_videos=patches, video_grid_thw=torch.tensor([grid]),
                second_per_grid_ts=torch.tensor([2 / host.fps]),
                mm_token_type_ids=(full == token_ids["<|video_pad|>"]).int() * 2)


@pytest.mark.parametrize("T, H, W", [(2, 56, 84), (4, 112, 56), (5, 84, 140)])
def test_logits_and_positions_equal_transformers(qwen, T, H, W):
    d, hf, token_ids = qwen
    host = weights.load_video_llm(d)
    host.min_pixels = 28 * 28  # tiny frames: no upscaling to 128 * 28 * 28 pixels
    host.text_after = "grid"  # the installed transformers' rule for the text after the video (the host's docstring)
    ids = prompt_ids(token_ids)
    pixels = host.preprocess(frames_of(T, H, W))
    embeds, video, positions = host.prompt(ids, pixels)
    inputs = hf_inputs(host, ids, pixels, token_ids)
    want_pos, deltas = hf.model.get_rope_index(**{k: v for k, v in inputs.items() if k != "pixel_values_videos"})
    assert torch.equal(positions, want_pos[:, 0])
    assert video.frames == (T + 1) // 2 and video.tokens_per_frame == H * W // 28 // 28
    with torch.no_grad():
        want = hf(**inputs).logits[0].float()
    got = host.logits(ids, pixels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert int(positions.max()) + 1 == embeds.shape[1] + deltas.item()  # where decoding goes on


def test_generation_continues_from_rope_deltas_as_transformers_generates(qwen):
    d, hf, token_ids = qwen
    host = weights.load_video_llm(d)
    host.min_pixels = 28 * 28
    host.text_after = "grid"
    ids = prompt_ids(token_ids)
    pixels = host.preprocess(frames_of(4, 84, 112, seed=1))
    embeds, video, positions = host.prompt(ids, pixels)
    inputs = hf_inputs(host, ids, pixels, token_ids)
    with torch.no_grad():
        want = hf.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                           return_dict_in_generate=True, eos_token_id=None)
    out = generate(host.llm, embeds, 6, positions=positions)
    assert out.tokens.tolist() == want.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    torch.testing.assert_close(out.logits, torch.cat(want.logits).float(), rtol=1e-4, atol=1e-4)
    # alpha = 1 through the pruning path: the same tokens and logits, bit for bit
    full = generate(host.llm, embeds, 6, video=video, alpha=1.0, layer=2, positions=positions)
    assert torch.equal(full.tokens, out.tokens) and torch.equal(full.logits, out.logits)


@pytest.mark.parametrize("method", ["llm-vtp", "fastv"])
def test_pruned_prefill_keeps_the_kept_rows_3d_positions(qwen, method):
    """The pruned prefill's logits against transformers' own decoder layers run by hand: layers 1..M on every row,
    then only the kept rows, at transformers' position_ids of those rows (its rotary, its masks)."""
    d, hf, token_ids = qwen
    host = weights.load_video_llm(d)
    host.min_pixels = 28 * 28
    host.text_after = "grid"
    ids = prompt_ids(token_ids)
    pixels = host.preprocess(frames_of(6, 84, 112, seed=2))
    embeds, video, positions = host.prompt(ids, pixels)
    caches = host.llm.new_caches(max_len=embeds.shape[1] + 1)
    if method == "fastv":  # a rival brings its own prefill
        logits, pruning = FastV(alpha=0.3, layer=2).prefill(host.llm, embeds, caches, video, positions=positions)
    else:
        logits, pruning = prefill(host.llm, embeds, caches, video, Method(alpha=0.3, layer=2), positions=positions)
    rows = pruning.rows
    assert rows.numel() < embeds.shape[1]
    inputs = hf_inputs(host, ids, pixels, token_ids)
    hf_pos, _ = hf.model.get_rope_index(**{k: v for k, v in inputs.items() if k != "pixel_values_videos"})
    text = hf.model.language_model
    text.config._attn_implementation = "eager"

    def layers(x, pos, start, stop):
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        cos_sin = text.rotary_emb(x, pos)
        for layer in text.layers[start:stop]:
            x = layer(x, attention_mask=mask, position_embeddings=cos_sin)
        return x

    with torch.no_grad():
        x = layers(embeds, hf_pos, 0, 2)
        x = layers(x[:, rows], hf_pos[:, :, rows], 2, 3)  # the kept rows at THEIR positions from get_rope_index
        want = hf.lm_head(text.norm(x))[0, -1]
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    # and renumbering them (the LLaMA habit of positions = rows) gives another answer
    with torch.no_grad():
        wrong = hf.lm_head(text.norm(layers(layers(embeds, hf_pos, 0, 2)[:, rows],
                                            torch.arange(rows.numel()).expand(3, 1, -1), 2, 3)))[0, -1]
    assert (wrong - want).abs().max() > 1e-3


def test_text_after_a_long_video_starts_past_its_largest_position():
    """Qwen's own get_rope_index (and vLLM's): the text after the video from the video's largest position + 1, t
    included. Written out here for 3 groups of 2 x 3 blocks at dt = 2 (t reaches s + 4 > s + max(2, 3)); the
    'grid' rule of transformers 5.x starts it at s + 3; for 2 groups (t up to s + 2) they agree."""
    host = qwen2_5_vl.Qwen25VL.__new__(qwen2_5_vl.Qwen25VL)
    torch.nn.Module.__init__(host)
    host.vision = QwenViT.__new__(QwenViT)
    host.vision.cfg, host.fps, host.text_after = QwenViTConfig(), 2.0, "max"
    pos = host.positions(5, (3, 4, 6), 4)
    assert pos[:, :5].tolist() == [list(range(5))] * 3
    assert pos[0, 5:23].tolist() == [5] * 6 + [7] * 6 + [9] * 6  # t: s + group * 2
    assert pos[1, 5:11].tolist() == [5, 5, 5, 6, 6, 6] and pos[2, 5:11].tolist() == [5, 6, 7, 5, 6, 7]
    assert pos[:, 23:].tolist() == [[10, 11, 12, 13]] * 3  # 9 + 1
    host.text_after = "grid"
    assert host.positions(5, (3, 4, 6), 4)[:, 23:].tolist() == [[8, 9, 10, 11]] * 3  # 5 + max(2, 3)
    grid_rule = host.positions(5, (2, 4, 6), 4)
    host.text_after = "max"
    assert torch.equal(host.positions(5, (2, 4, 6), 4), grid_rule)


def test_prumerge_says_why_it_does_not_apply(qwen):
    d, _, token_ids = qwen
    host = weights.load_video_llm(d)
    with pytest.raises(ValueError, match="class token"):
        PruMergePlus().prompt(host, prompt_ids(token_ids), host.preprocess(frames_of(2, 56, 56)))


def test_chat_prompt_is_the_chat_templates():
    # apply_chat_template of Qwen2.5-VL-*-Instruct on [{"role": "user", "content": [video, text]}] with
    # add_generation_prompt, as the model cards print it for an image (<|image_pad|>; a video writes <|video_pad|>)
    card = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n")
    assert chat_prompt("Describe this image.") == card.replace("<|image_pad|>", "<|video_pad|>")


# ---- the command line ------------------------------------------------------------------------------------------


def run(*args):
    return subprocess.run([sys.executable, "-m", "minivtp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def small(qwen, tmp_path_factory):
    """The checkpoint with 4 frames a video and a processor config that keeps frames small (56 x 84 from 40 x 50),
    and a clip of 8 frames: 2 groups of 2 x 3 merged tokens."""
    d, _, _ = qwen
    local = tmp_path_factory.mktemp("q4") / "qwen2.5-vl-4"
    local.mkdir()
    for f in d.iterdir():
        if f.name != "config.json":
            (local / f.name).symlink_to(f)
    (local / "config.json").write_text(json.dumps(dict(json.loads((d / "config.json").read_text()), num_frames=4)))
    (local / "video_preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 3136,
                                                                               "longest_edge": 12544}}))
    clip = local.parent / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (8, 40, 50, 3), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(2))}, clip)
    return local, clip


@pytest.mark.parametrize("method, extra, kept", [("llm-vtp", ["--alpha", 0.3, "--layer", 2], 2 * 2),
                                                 ("llm-vtp", ["--alpha", 0.5, "--layer", 2, "--variant", "released"],
                                                  2 * 3),
                                                 ("fastv", ["--alpha", 0.3, "--layer", 2], 4),
                                                 ("look-m", [], None)])
def test_cli_answer(small, method, extra, kept):
    local, clip = small
    out = run("answer", "--weights", local, "--video", clip, "--question", "What is it?", "--method", method, *extra,
              "--max-new-tokens", 3, "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["video_tokens"] == 2 * 6 and r["new_tokens"] >= 1
    if kept is None:  # Look-M: every layer's cache smaller after a full prefill
        assert max(r["cache_rows_per_layer"]) < r["prompt_rows"]
    else:
        assert r["kept_video_tokens"] == kept
    if method == "llm-vtp":  # Eq. 7-8: layers 1..M forget the dropped rows too
        assert r["cache_rows"] == r["prompt_rows"] - (12 - kept)


def test_cli_prumerge_is_one_clear_error(small):
    local, clip = small
    out = run("answer", "--weights", local, "--video", clip, "--question", "Why?", "--method", "prumerge+",
              "--device", "cpu")
    assert out.returncode != 0 and "class token" in out.stderr and "Traceback" not in out.stderr


def test_eval_runs(small, tmp_path):
    local, clip = small
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"action": [
        {"video": clip.name, "question": "What happens?", "candidates": ["a cat", "a dog"], "answer": "a dog"}]}))
    out = run("eval", "--weights", local, "--questions", questions, "--videos", clip.parent, "--out",
              tmp_path / "r.jsonl", "--method", "llm-vtp", "--alpha", 0.5, "--layer", 2, "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.jsonl").read_text().strip()


def test_weights_cli_describes_the_host(small):
    local, _ = small
    out = subprocess.run([sys.executable, "weights.py", str(local)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Qwen2.5-VL ViT, 4 blocks (whole frames in [1, 3]" in out.stdout and "M-RoPE [2, 3, 3]" in out.stdout


def test_cli_heatmap_is_one_clear_error(small, tmp_path):
    local, clip = small
    out = run("answer", "--weights", local, "--video", clip, "--question", "Why?", "--alpha", 0.5, "--layer", 2,
              "--heatmap", tmp_path / "h.png", "--max-new-tokens", 1, "--device", "cpu")
    assert out.returncode != 0 and "groups of two frames" in out.stderr and "Traceback" not in out.stderr
