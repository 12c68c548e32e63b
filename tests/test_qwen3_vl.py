"""Qwen3-VL's pieces that stand before the decoder, each against transformers on tiny configs it builds itself:
the vision tower with its DeepStack mergers (Qwen3VLVisionModel), the loader's names (save_pretrained), the video
preprocessing (Qwen3VLVideoProcessor's own functions), the prompt with its timestamps (Qwen3VLProcessor's
expansion, through a Qwen-shaped byte-level tokenizer) and the 3D positions of every row (get_rope_index); last,
transformers' whole Qwen3VLModel on a clip preprocessed here hands its decoder what these pieces give."""

import json
import types

import pytest
import torch
from conftest import randomize, transformers

from minivtp.checkpoint import CheckpointError, apply_rules
from minivtp.hosts import qwen3_vit
from minivtp.hosts.qwen3_vit import QWEN3_VISION_TO_OURS, Qwen3VisionConfig, Qwen3VisionTower


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


VISION = dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=4, patch_size=16, spatial_merge_size=2,
              temporal_patch_size=2, out_hidden_size=40, num_position_embeddings=36, deepstack_visual_indexes=[0, 2])
TEXT = dict(vocab_size=300, hidden_size=40, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 5e5, "mrope_section": [2, 3, 3],
                             "mrope_interleaved": True})
IDS = dict(image_token_id=290, video_token_id=291, vision_start_token_id=292, vision_end_token_id=293)


def vl_config(**vision):
    return transformers.Qwen3VLConfig(vision_config=dict(VISION, **vision), text_config=TEXT, **IDS)


def hf_tower(seed=0, **vision):
    """transformers' Qwen3VLVisionModel with random weights (written out larger than its init: see randomize)."""
    torch.manual_seed(seed)
    cfg = vl_config(**vision).vision_config
    cfg._attn_implementation = "eager"  # the softmax written out: another path than ours (SDPA)
    return randomize(transformers.Qwen3VLVisionModel(cfg), seed).eval()


def tower_from(hf_visual) -> Qwen3VisionTower:
    """Ours, filled from transformers' tower through the loader's rename rules; every name used, every
    parameter filled."""
    tower = Qwen3VisionTower(Qwen3VisionConfig.from_hf(hf_visual.config.to_dict()))
    state = {apply_rules(k, QWEN3_VISION_TO_OURS): v for k, v in hf_visual.state_dict().items()}
    assert None not in state and len(state) == len(hf_visual.state_dict())
    tower.load_state_dict(state, strict=True)
    return tower.eval()


def hf_forward(hf_visual, patches, grid):
    with torch.no_grad():
        out = hf_visual(patches, grid_thw=torch.tensor([grid]))
    return out.pooler_output, out.deepstack_features


# ---- the vision tower ------------------------------------------------------------------------------------------

GRIDS = {  # (t, h, w) in patches; the learned table is 6 x 6
    "one group, square": (1, 4, 4),
    "two groups, wider than tall": (2, 4, 6),
    "three groups, taller than wide": (3, 6, 4),
    "larger than the table": (2, 8, 10),
    "smaller than the table": (2, 2, 2),
}


@pytest.mark.parametrize("name", GRIDS)
def test_tower_equals_transformers_with_every_deepstack_output(name):
    hf = hf_tower(seed=len(name))
    ours = tower_from(hf)
    grid = GRIDS[name]
    t, h, w = grid
    patches = torch.randn(t * h * w, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(t * h + w))
    ref, ref_deep = hf_forward(hf, patches, grid)
    with torch.no_grad():
        out, deep = ours(patches, grid)
    assert out.shape == ref.shape == (t * h * w // 4, 40) and len(deep) == len(ref_deep) == 2
    assert ref.abs().max() > 1.0
    # float32 on both sides; the differences are the order of additions (SDPA against eager softmax, the four
    # bilinear taps summed in another association): ~1e-6 of the largest value. 1e-4 leaves room for that over
    # 4 blocks, and a row in the wrong order, a wrong RoPE frequency or a missed norm is off by 1e-1 or more.
    assert rel_err(out, ref) <= 1e-4
    for a, b in zip(deep, ref_deep):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-4


def test_tower_in_bfloat16_errs_as_little_as_transformers_does():
    """The released weights are bf16. Against the float32 answer, ours in bf16 is off by about what
    transformers' is in bf16 (~1e-2 of the largest value: 8 bits of mantissa through 4 blocks); a float32 step
    missing on our side (RoPE, the position weights) would show as a multiple of it."""
    hf = hf_tower(seed=2)
    ours = tower_from(hf)
    grid = (2, 8, 10)
    patches = torch.randn(160, 1536, generator=torch.Generator().manual_seed(5))
    ref, ref_deep = hf_forward(hf, patches, grid)
    hf16, ours16 = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    theirs, theirs_deep = hf_forward(hf16, patches.bfloat16(), grid)
    with torch.no_grad():
        out, deep = ours16(patches.bfloat16(), grid)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) <= 2 * rel_err(theirs.float(), ref)
    for a, b, c in zip(deep, theirs_deep, ref_deep):
        assert rel_err(a.float(), c) <= 2 * rel_err(b.float(), c)


def test_tower_groups_do_not_see_each_other():
    """Each temporal group attends to its own patches: changing group 1's pixels leaves group 0's tokens alone
    (and transformers agrees: its cu_seqlens has one segment per group)."""
    hf = hf_tower()
    ours = tower_from(hf)
    grid = (2, 4, 4)
    patches = torch.randn(32, 1536)
    changed = patches.clone()
    changed[16:] += 1.0
    with torch.no_grad():
        a, _ = ours(patches, grid)
        b, _ = ours(changed, grid)
    assert torch.equal(a[:4], b[:4]) and not torch.allclose(a[4:], b[4:])


def test_tower_builds_nothing_on_the_cpu_behind_the_weights_back():
    """Run on the meta device, where any CPU tensor mixed into the arithmetic raises as it would on a GPU: the
    position taps and RoPE tables follow the weights' device."""
    with torch.device("meta"):
        tower = Qwen3VisionTower(Qwen3VisionConfig.from_hf(VISION))
    out, deep = tower(torch.empty(2 * 4 * 6, 1536, device="meta"), (2, 4, 6))
    assert out.device.type == "meta" and out.shape == (12, 40) and [d.shape for d in deep] == [(12, 40)] * 2


def test_position_table_resampling_is_bilinear_with_aligned_corners():
    """The four-tap sum equals F.interpolate(bilinear, align_corners=True) of the table seen as an image."""
    import torch.nn.functional as F
    from einops import rearrange
    table = torch.randn(36, 8)
    for h, w in [(4, 6), (10, 2), (6, 6), (2, 12)]:
        ours = qwen3_vit.interpolate_positions(table, h, w, merge=2)
        image = rearrange(table, "(a b) c -> 1 c a b", a=6)
        ref = F.interpolate(image, size=(h, w), mode="bilinear", align_corners=True)
        ref = rearrange(ref[0], "c (bh mh) (bw mw) -> (bh bw mh mw) c", mh=2, mw=2)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_config_defaults_are_transformers():
    """A vision_config with keys missing is read as transformers reads it (its Qwen3VLVisionConfig defaults)."""
    d, ours = transformers.Qwen3VLVisionConfig(), Qwen3VisionConfig.from_hf({})
    assert (ours.n_layers, ours.dim, ours.n_heads, ours.hidden_dim, ours.out_dim, ours.n_pos, ours.deepstack_layers,
            ours.rope_theta, ours.act, ours.patch_size, ours.temporal_patch_size, ours.merge_size) == \
        (d.depth, d.hidden_size, d.num_heads, d.intermediate_size, d.out_hidden_size, d.num_position_embeddings,
         tuple(d.deepstack_visual_indexes), d.rope_parameters["rope_theta"], d.hidden_act, d.patch_size,
         d.temporal_patch_size, d.spatial_merge_size)


def test_tower_refuses_patches_that_do_not_match_the_grid():
    ours = Qwen3VisionTower(Qwen3VisionConfig.from_hf(VISION))
    with pytest.raises(ValueError, match=r"patches must be \(t\*h\*w, 1536\) = \(32, 1536\) for grid \(2, 4, 4\)"):
        ours(torch.zeros(30, 1536), (2, 4, 4))
    with pytest.raises(ValueError, match="h and w must be multiples of the merge size 2"):
        ours(torch.zeros(2 * 3 * 4, 1536), (2, 3, 4))
    with pytest.raises(ValueError, match="deepstack_visual_indexes has 4, outside 0..3"):
        Qwen3VisionConfig.from_hf(dict(VISION, deepstack_visual_indexes=[1, 4]))


# ---- the loader's names ----------------------------------------------------------------------------------------


def write_qwen3_vl(path, seed=0, tie=False):
    """A tiny Qwen3VLForConditionalGeneration, random, saved by transformers; returns the model (eval)."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen3VLConfig(vision_config=VISION, text_config=TEXT, **IDS, tie_word_embeddings=tie)
    model = randomize(transformers.Qwen3VLForConditionalGeneration(cfg), seed).eval()
    model.save_pretrained(path)
    return model


def checkpoint_names(path):
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.mark.parametrize("tie", [False, True], ids=["lm_head", "tied (2B, 4B): no lm_head"])
def test_every_checkpoint_tensor_has_one_parameter_and_every_parameter_one_tensor(tmp_path, tie):
    """The whole save_pretrained layout through QWEN3_VL_TO_OURS: the tower's names are exactly our tower's
    parameters (same shapes); the decoder's are exactly model.py's Transformer's, plus q_norm and k_norm per
    layer (Qwen3's, which the decoder adds)."""
    from minivtp.hosts.qwen3_vl import qwen3_vl_to_ours
    from minivtp.model import Config, Transformer
    write_qwen3_vl(tmp_path, tie=tie)
    stored = checkpoint_names(tmp_path)
    mapped = {k: qwen3_vl_to_ours(k) for k in stored}
    assert [k for k, v in mapped.items() if v is None] == []
    assert len(set(mapped.values())) == len(mapped)  # no two tensors land on one parameter
    vision = {v[len("vision."):]: stored[k] for k, v in mapped.items() if v.startswith("vision.")}
    llm = {v[len("llm."):]: stored[k] for k, v in mapped.items() if v.startswith("llm.")}
    assert len(vision) + len(llm) == len(stored)
    tower = Qwen3VisionTower(Qwen3VisionConfig.from_hf(VISION))
    assert vision == {n: tuple(p.shape) for n, p in tower.named_parameters()}
    decoder = Transformer(Config(vocab_size=300, dim=40, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64,
                                 head_dim=16, norm_eps=1e-6, tie_embeddings=tie))
    want = {n: tuple(p.shape) for n, p in decoder.named_parameters()}
    for i in range(2):
        want[f"layers.{i}.attn.q_norm.weight"] = want[f"layers.{i}.attn.k_norm.weight"] = (16,)
    assert llm == want


def test_load_tower_from_a_checkpoint_equals_transformers(tmp_path):
    from minivtp.hosts.qwen3_vl import load_tower
    hf = write_qwen3_vl(tmp_path, seed=3)
    tower = load_tower(tmp_path)
    patches, grid = torch.randn(2 * 4 * 6, 1536), (2, 4, 6)
    with torch.no_grad():
        ref = hf.model.visual(patches, grid_thw=torch.tensor([grid]))
        out, deep = tower(patches, grid)
    assert rel_err(out, ref.pooler_output) <= 1e-4  # float32, as in the tower tests above
    assert all(rel_err(a, b) <= 1e-4 for a, b in zip(deep, ref.deepstack_features))


def test_load_tower_refuses_another_model(tmp_path):
    from minivtp.hosts.qwen3_vl import load_tower
    write_qwen3_vl(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, model_type="qwen2_5_vl")))
    with pytest.raises(CheckpointError, match=r"'qwen2_5_vl' is not Qwen3-VL's \(qwen3_vl, with a vision_config\)"):
        load_tower(tmp_path)


# ---- preprocessing: Qwen3VLVideoProcessor's own functions as the oracle -----------------------------------------
# transformers' video processors need torchvision, which is not installed here (and is not pulled in: it
# drags a CUDA torch). Its functions that do not touch torchvision are called as they are; for the whole
# pipeline, its two torchvision calls are replaced by what torchvision does for them (read in
# torchvision/transforms/v2/functional/_geometry.py resize_image and _misc.py normalize): on the CPU a uint8
# bicubic antialiased F.interpolate, and (x - mean) / std. When torchvision is there, the last test runs the
# processor untouched.

from minivtp.hosts import qwen3_vl  # noqa: E402
from minivtp.hosts.qwen3_vl import VideoProcessing  # noqa: E402

vp = pytest.importorskip("transformers.models.qwen3_vl.video_processing_qwen3_vl")


def hf_sample(total, video_fps, fps=None, num_frames=None, min_frames=4, max_frames=768):
    from transformers.video_utils import VideoMetadata
    me = types.SimpleNamespace(fps=2, min_frames=min_frames, max_frames=max_frames, num_frames=None)
    md = VideoMetadata(total_num_frames=total, fps=video_fps)
    return vp.Qwen3VLVideoProcessor.sample_frames(me, md, num_frames=num_frames, fps=fps).tolist()


SAMPLING = [(100, 25.0, None, None), (3, 30.0, None, None), (7, 30.0, None, None), (900, 30.0, None, None),
            (5000, 24.0, 1, None), (100000, 30.0, None, None), (61, 29.97, 0.5, None), (100, 25.0, None, 16),
            (10, 25.0, None, 16), (100, 25.0, None, 7), (9, 2.0, None, None), (2, 1.0, None, None)]


@pytest.mark.parametrize("total, video_fps, fps, num_frames", SAMPLING)
def test_frame_sampling_equals_the_processors(total, video_fps, fps, num_frames):
    ours = qwen3_vl.sample_indices(total, video_fps, VideoProcessing(), fps=fps, num_frames=num_frames)
    assert ours == hf_sample(total, video_fps, fps, num_frames)


def test_frame_sampling_rounds_half_to_even_as_numpy():
    """5 frames out of 10: linspace gives 0, 2.25, 4.5, 6.75, 9; numpy rounds 4.5 to 4 (half to even)."""
    assert qwen3_vl.sample_indices(10, 1.0, VideoProcessing(), num_frames=5) == [0, 2, 4, 7, 9] == \
        hf_sample(10, 1.0, num_frames=5)


SIZES = [(4, 64, 96), (8, 480, 640), (2, 20, 300), (16, 1080, 1920), (5, 31, 31), (768, 360, 640), (3, 33, 6000),
         (64, 224, 224), (6, 500, 17)]


@pytest.mark.parametrize("frames, height, width", SIZES)
def test_smart_resize_equals_the_processors(frames, height, width):
    p = VideoProcessing()
    assert qwen3_vl.smart_resize(frames, height, width, p) == vp.smart_resize(
        frames, height, width, temporal_factor=2, factor=32, min_pixels=p.min_pixels, max_pixels=p.max_pixels)


@pytest.fixture
def hf_processor(monkeypatch):
    """Qwen3VLVideoProcessor without its __init__ (which asks for torchvision), its torchvision calls replaced
    by torchvision's math."""
    import torch.nn.functional as F
    from transformers.video_processing_utils import BaseVideoProcessor

    def resize(self, image, size, resample=None, antialias=True, **kwargs):
        if tuple(image.shape[-2:]) == (size.height, size.width):
            return image
        flat = image.reshape(-1, *image.shape[-3:])
        out = F.interpolate(flat, size=(size.height, size.width), mode="bicubic", align_corners=False, antialias=True)
        return out.reshape(*image.shape[:-2], size.height, size.width)

    def normalize(self, image, mean, std, inplace=False, **kwargs):
        return image.sub(mean.view(-1, 1, 1)).div(std.view(-1, 1, 1))

    monkeypatch.setattr(BaseVideoProcessor, "resize", resize, raising=False)
    monkeypatch.setattr(BaseVideoProcessor, "normalize", normalize, raising=False)
    return object.__new__(vp.Qwen3VLVideoProcessor)


def hf_preprocess(proc, frames, p: VideoProcessing, cap=False):
    """transformers' _preprocess of one video (T', 3, H, W) uint8, already sampled."""
    from transformers.image_utils import PILImageResampling, SizeDict
    size = SizeDict(shortest_edge=p.min_pixels, longest_edge=p.max_pixels)
    out = proc._preprocess([frames], do_resize=True, size=size,
                           resample=PILImageResampling.BICUBIC, do_rescale=True, rescale_factor=p.rescale_factor,
                           do_normalize=True, image_mean=tuple(p.mean), image_std=tuple(p.std), patch_size=p.patch_size,
                           temporal_patch_size=p.temporal_patch_size, merge_size=p.merge_size,
                           cap_pixels_per_frame=cap, max_video_tokens=p.max_video_tokens, return_tensors="pt")
    return out["pixel_values_videos"], tuple(out["video_grid_thw"][0].tolist())


CLIPS = {  # (frames, H, W): scaled up, kept, scaled down, odd frame counts, wide
    "small, scaled up": (4, 70, 100), "kept": (4, 256, 384), "scaled down, odd": (9, 480, 640),
    "one group, wide": (2, 40, 300), "three frames": (3, 128, 96),
}


@pytest.mark.parametrize("name", CLIPS)
def test_preprocess_equals_the_processors_pipeline(hf_processor, name):
    """Sizes, normalisation, padding to whole groups and the patch order, bit for bit (the same float32
    operations on both sides)."""
    T, H, W = CLIPS[name]
    frames = torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(T * H))
    p = VideoProcessing()
    ref, grid = hf_preprocess(hf_processor, frames.permute(0, 3, 1, 2), p)
    video = qwen3_vl.preprocess(frames, video_fps=10.0, p=p, indices=list(range(T)))
    assert video.grid == grid and torch.equal(video.patches, ref)


def test_preprocess_samples_then_processes_as_the_processor(hf_processor):
    frames = torch.randint(0, 256, (50, 64, 64, 3), dtype=torch.uint8)
    p = VideoProcessing(fps=1.0)
    video = qwen3_vl.preprocess(frames, video_fps=10.0, p=p)
    indices = hf_sample(50, 10.0, fps=1.0)
    ref, grid = hf_preprocess(hf_processor, frames[indices].permute(0, 3, 1, 2), p)
    assert video.indices == indices and video.grid == grid and torch.equal(video.patches, ref)
    assert len(video.timestamps) == grid[0]


def test_per_frame_pixel_cap_equals_the_processors(hf_processor):
    """cap_pixels_per_frame (qwen-vl-utils' budget, off by default in transformers) asks for the same size."""
    p = VideoProcessing(cap_pixels_per_frame=True, max_video_tokens=16)
    for T, H, W in [(4, 480, 640), (12, 360, 640), (2, 100, 100)]:
        frames = torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8)
        ref, grid = hf_preprocess(hf_processor, frames.permute(0, 3, 1, 2), p, cap=True)
        video = qwen3_vl.preprocess(frames, video_fps=10.0, p=p, indices=list(range(T)))
        assert video.grid == grid and torch.equal(video.patches, ref)


def test_the_cpu_resize_is_not_the_float_resize():
    """Why resize_frames keeps torchvision's two paths apart: torch's uint8 bicubic kernel (what torchvision
    uses on the CPU) and the float32 resize, clamped and rounded (what it uses on a GPU), disagree by many
    levels on sharp edges, far beyond a rounding step."""
    import torch.nn.functional as F
    frames = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = qwen3_vl.resize_frames(frames, 96, 128)
    floats = F.interpolate(frames.float(), size=(96, 128), mode="bicubic", align_corners=False, antialias=True)
    floats = floats.clamp(0, 255).round().to(torch.uint8)
    assert cpu.dtype == torch.uint8 and (cpu.int() - floats.int()).abs().max() > 4
    assert qwen3_vl.resize_frames(frames, 40, 60) is frames  # the size it has: untouched, as torchvision


def test_group_timestamps_equal_the_processors():
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    cases = [([0, 7, 15, 22, 29], 10.0), ([0, 1, 2, 3], 2.0), (list(range(0, 300, 13)), 29.97), ([5], 24.0)]
    for indices, fps in cases:
        ref = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
        assert qwen3_vl.group_timestamps(indices, fps) == ref


def test_video_processing_reads_the_checkpoints_file(tmp_path):
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 4096, "longest_edge": 25165824}, "image_mean": [0.4, 0.5, 0.6], "fps": 1,
         "min_frames": 2, "max_frames": 64, "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}))
    p = VideoProcessing.from_dir(tmp_path)
    assert (p.min_pixels, p.max_pixels, p.mean, p.fps, p.min_frames, p.max_frames) == \
        (4096, 25165824, (0.4, 0.5, 0.6), 1, 2, 64)
    assert p.source.endswith("video_preprocessor_config.json")
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"resample": 2}))
    with pytest.raises(ValueError, match="resample 2; minivtp resizes as the released processors do, bicubic"):
        VideoProcessing.from_dir(tmp_path)
    assert VideoProcessing.from_dir(tmp_path / "nowhere").source == "Qwen3VLVideoProcessor's defaults"


def test_preprocess_needs_no_torchvision():
    """Run time is torch, safetensors, einops: with torchvision made unimportable, preprocessing still runs."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "import torch\nfrom minivtp.hosts import qwen3_vl\n"
            "v = qwen3_vl.preprocess(torch.zeros(6, 64, 64, 3, dtype=torch.uint8), video_fps=2.0)\n"
            "print(v.grid)")
    root = qwen3_vl.__file__.rsplit("/minivtp/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    here = qwen3_vl.preprocess(torch.zeros(6, 64, 64, 3, dtype=torch.uint8), video_fps=2.0).grid
    assert out.stdout.strip() == str(here) == "(3, 10, 10)"  # 6 frames; 6 x 64 x 64 scaled up to 160 x 160


def test_preprocess_refuses_bad_input():
    with pytest.raises(ValueError, match=r"frames must be a \(T, H, W, 3\) uint8 tensor, got \(4, 3, 64, 64\)"):
        qwen3_vl.preprocess(torch.zeros(4, 3, 64, 64, dtype=torch.uint8), video_fps=2.0)
    with pytest.raises(ValueError, match="give fps or num_frames, not both"):
        qwen3_vl.sample_indices(10, 2.0, VideoProcessing(), fps=1, num_frames=4)
    with pytest.raises(ValueError, match="needs the video's own frame rate"):
        qwen3_vl.sample_indices(10, None, VideoProcessing())
    with pytest.raises(ValueError, match=r"1 frame\(s\): Qwen3-VL's processor needs at least 2"):
        qwen3_vl.preprocess(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), video_fps=2.0)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("torchvision"), reason="torchvision is not installed")
def test_preprocess_equals_the_whole_processor_with_torchvision():
    proc = vp.Qwen3VLVideoProcessor()
    for T, H, W in [(30, 70, 100), (17, 240, 320)]:
        frames = torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8)
        from transformers.video_utils import VideoMetadata
        out = proc(videos=[frames.permute(0, 3, 1, 2)], video_metadata=[VideoMetadata(total_num_frames=T, fps=10.0)],
                   cap_pixels_per_frame=False, return_tensors="pt")
        video = qwen3_vl.preprocess(frames, video_fps=10.0)
        assert video.grid == tuple(out["video_grid_thw"][0].tolist())
        assert torch.equal(video.patches, out["pixel_values_videos"])


# ---- the prompt: Qwen3VLProcessor's expansion, a Qwen-shaped tokenizer, transformers' 3D positions ----------------

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    """(directory, tokenizers.Tokenizer): byte-level BPE shaped as Qwen2/Qwen3's tokenizer.json is (NFC, the
    Qwen2 split regex then ByteLevel without its own regex, ByteLevel decoder), with Qwen-VL's special tokens."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from conftest import TOKENIZER_CORPUS
    from test_tokenizer import QWEN2_PATTERN
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # Qwen's: it adds no token
    corpus = TOKENIZER_CORPUS[:5] + [f"<{s / 10:.1f} seconds>" for s in range(0, 400, 7)] * 3
    tok.train_from_iterator(corpus * 10, trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIALS,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                             show_progress=False))
    path = tmp_path_factory.mktemp("qwen3_vl_tokenizer")
    tok.save(str(path / "tokenizer.json"))
    return path, tok


def hf_expand(text, grid, indices, video_fps):
    """Qwen3VLProcessor's own expansion (replace_video_token, get_text_with_replacements) of one video."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata
    proc = object.__new__(Qwen3VLProcessor)  # its __init__ wants the video processor, which wants torchvision
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.vision_start_token, proc.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    proc.video_processor = types.SimpleNamespace(merge_size=2, temporal_patch_size=2)
    md = VideoMetadata(total_num_frames=max(indices) + 1, fps=video_fps, frames_indices=list(indices))
    replacement = proc.replace_video_token({"video_grid_thw": torch.tensor([grid]), "video_metadata": [md]}, 0)
    return proc.get_text_with_replacements([text], videos_replacements=[replacement])[0][0]


PROMPTS = {  # grid (t, h, w), the frames read, the video's fps
    "one group": ((1, 4, 4), [0, 3], 10.0),
    "two groups, wide": ((2, 4, 6), [0, 7, 15, 22], 10.0),
    "three groups, the last padded": ((3, 6, 4), [0, 7, 15, 22, 29], 10.0),
    "four groups, a long thin grid": ((4, 2, 8), list(range(0, 240, 30)), 29.97),
}


@pytest.fixture(scope="module")
def hf_rope():
    torch.manual_seed(0)
    return transformers.Qwen3VLModel(vl_config()).eval()


@pytest.mark.parametrize("name", PROMPTS)
def test_prompt_rows_and_positions_equal_transformers(qwen_tokenizer, hf_rope, name):
    from minivtp.tokenizer import Tokenizer
    grid, indices, video_fps = PROMPTS[name]
    path, hf_tok = qwen_tokenizer
    text = qwen3_vl.chat_text("What is the man doing in the video?")
    expanded = qwen3_vl.expand_video(text, grid, qwen3_vl.group_timestamps(indices, video_fps))
    assert expanded == hf_expand(text, grid, indices, video_fps)

    ids = Tokenizer.from_file(path).encode(expanded)
    assert ids == hf_tok.encode(expanded).ids
    ids = torch.tensor(ids)
    video_id = hf_tok.token_to_id("<|video_pad|>")
    t, h, w = grid
    Nv = h * w // 4

    rows = qwen3_vl.video_rows(ids, video_id, grid)
    assert rows.shape == (t, Nv)
    # the k-th video row of the prompt gets the k-th merged token (transformers' masked_scatter fills in order)
    assert rows.flatten().tolist() == (ids == video_id).nonzero().flatten().tolist()
    start, end = hf_tok.token_to_id("<|vision_start|>"), hf_tok.token_to_id("<|vision_end|>")
    for g in range(t):
        assert ids[rows[g, 0] - 1] == start and ids[rows[g, -1] + 1] == end
    if t > 1:  # timestamps between the groups: not one contiguous run
        assert (rows[1:, 0] - rows[:-1, -1] > 2).all()

    pos, delta = qwen3_vl.mrope_positions(ids, video_id, grid)
    mm_types = (ids == video_id).long() * 2  # transformers' mm_token_type_ids: 2 for video tokens
    ref, ref_delta = hf_rope.get_rope_index(ids[None], mm_types[None], video_grid_thw=torch.tensor([grid]))
    assert torch.equal(pos, ref[:, 0]) and delta == ref_delta.item()


def test_build_prompt_puts_it_together(qwen_tokenizer, hf_rope):
    """One call from a question and a preprocessed clip to ids, rows and positions; the same as the steps."""
    from minivtp.tokenizer import Tokenizer
    path, hf_tok = qwen_tokenizer
    tok = Tokenizer.from_file(path)
    video = qwen3_vl.preprocess(torch.zeros(30, 64, 96, 3, dtype=torch.uint8), video_fps=10.0)
    video_id = hf_tok.token_to_id("<|video_pad|>")
    prompt = qwen3_vl.build_prompt(tok, "Why?", video, video_id)
    text = hf_expand(qwen3_vl.chat_text("Why?"), video.grid, video.indices, 10.0)
    assert prompt.ids.tolist() == hf_tok.encode(text).ids
    ref, ref_delta = hf_rope.get_rope_index(prompt.ids[None], ((prompt.ids == video_id).long() * 2)[None],
                                            video_grid_thw=torch.tensor([video.grid]))
    assert torch.equal(prompt.positions, ref[:, 0]) and prompt.delta == ref_delta.item()
    t, h, w = video.grid
    assert prompt.rows.shape == (t, h * w // 4)
    end = hf_tok.token_to_id("<|vision_end|>")
    assert prompt.ids[prompt.question_start] == end and (prompt.ids[prompt.question_start:] != video_id).all()
    with pytest.raises(ValueError, match=f"<\\|video_pad\\|> is {video_id}, the model's video_token_id is 291"):
        qwen3_vl.build_prompt(tok, "Why?", video, 291)


def test_positions_continue_after_the_video_as_transformers_decodes(hf_rope):
    """A decoded row n has position n + delta on all three axes: transformers' compute_3d_position_ids."""
    ids = torch.tensor([5, 6, 1, 1, 1, 1, 1, 1, 7, 8, 9, 1, 1, 1, 1, 1, 1, 7, 4, 4])
    grid = (2, 4, 6)
    pos, delta = qwen3_vl.mrope_positions(ids, video_token_id=1, grid=grid)
    assert pos[:, -1].tolist() == [pos.max().item()] * 3  # the last text row holds the largest position
    assert len(ids) + delta == pos.max().item() + 1  # the next row's position
    _, ref_delta = hf_rope.get_rope_index(ids[None], ((ids == 1).long() * 2)[None], video_grid_thw=torch.tensor([grid]))
    assert delta == ref_delta.item()


def test_chat_text_is_what_the_template_writes():
    """The branches of Qwen3-VL's released chat template that a [video, text] user turn and the generation prompt
    go through (transcribed: no checkpoint reaches us), rendered by transformers' jinja on the same messages:
    no system turn unless one is given."""
    template = (
        "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
        "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for item in message.content %}"
        "{%- if 'video' in item or item.type == 'video' %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}"
        "{{- '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    from transformers.utils.chat_template_utils import render_jinja_template
    messages = [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "Why?"}]}]
    rendered = render_jinja_template([messages], chat_template=template, add_generation_prompt=True)[0][0]
    assert qwen3_vl.chat_text("Why?") == rendered
    with_system = [{"role": "system", "content": "Be brief."}] + messages
    rendered = render_jinja_template([with_system], chat_template=template, add_generation_prompt=True)[0][0]
    assert qwen3_vl.chat_text("Why?", system="Be brief.") == rendered


def test_prompt_errors_are_one_line():
    with pytest.raises(ValueError, match=r"the prompt has 2 <\|video_pad\|> placeholders"):
        qwen3_vl.expand_video(qwen3_vl.VIDEO_WRAPPER * 2, (1, 2, 2), [0.0])
    with pytest.raises(ValueError, match="2 timestamps for 1 temporal groups"):
        qwen3_vl.expand_video(qwen3_vl.VIDEO_WRAPPER, (1, 2, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"come in runs of \[4, 3\]; grid \(2, 4, 4\) needs 2 run\(s\) of 4"):
        qwen3_vl.video_rows(torch.tensor([0, 1, 1, 1, 1, 0, 1, 1, 1, 0]), 1, (2, 4, 4))


def test_what_transformers_feeds_its_decoder_is_what_these_pieces_give(monkeypatch):
    """transformers' whole Qwen3VLModel on a clip preprocessed here: the video embeddings it scatters into the
    prompt, the rows it scatters them to, each DeepStack feature it adds and the positions it passes to the
    decoder are our tower's tokens at `video_rows` (in that order), our DeepStack features, and our
    `mrope_positions`. What the host will hand the decoder, checked without one."""
    torch.manual_seed(0)
    hf = randomize(transformers.Qwen3VLForConditionalGeneration(vl_config()), 4).eval()
    tower = tower_from(hf.model.visual)
    frames = torch.randint(0, 256, (6, 64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    video = qwen3_vl.preprocess(frames, video_fps=4.0)
    t, h, w = video.grid
    Nv = h * w // 4
    group = [292] + [291] * Nv + [293]  # <|vision_start|>, the group's tokens, <|vision_end|>; ids as in IDS
    ids = [1, 2, 3]
    for g in range(t):
        ids += [10 + g, 20 + g] + group  # a timestamp's text, then the group
    ids = torch.tensor(ids + [4, 5, 6, 7])

    seen = {"deepstack": []}
    real_deepstack = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextModel._deepstack_process

    def deepstack(self, hidden, mask, embeds):
        seen["deepstack"].append((mask.clone(), embeds.clone()))
        return real_deepstack(self, hidden, mask, embeds)

    monkeypatch.setattr(transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLTextModel, "_deepstack_process",
                        deepstack)
    hook = hf.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"], positions=kwargs["position_ids"]),
        with_kwargs=True)
    with torch.no_grad():
        hf(input_ids=ids[None], pixel_values_videos=video.patches, video_grid_thw=torch.tensor([video.grid]),
           mm_token_type_ids=((ids == 291).long() * 2)[None])
        tokens, deep = tower(video.patches, video.grid)
    hook.remove()

    rows = qwen3_vl.video_rows(ids, 291, video.grid)
    assert rel_err(seen["embeds"][0, rows.flatten()], tokens) <= 1e-4  # float32, as the tower tests
    positions, _ = qwen3_vl.mrope_positions(ids, 291, video.grid)
    assert torch.equal(seen["positions"][:, 0], positions)
    assert len(seen["deepstack"]) == len(deep) == 2
    for (mask, embeds), ours in zip(seen["deepstack"], deep):
        assert mask[0].nonzero().flatten().tolist() == rows.flatten().tolist()
        assert rel_err(embeds, ours) <= 1e-4


# ---- the host: the pieces above on the host contract, against transformers' whole model -------------------------


@pytest.fixture(scope="module")
def qwen3_host(qwen_tokenizer, tmp_path_factory):
    """(directory, transformers' model): a tiny Qwen3VLForConditionalGeneration saved by transformers beside the
    Qwen-shaped tokenizer.json, its special ids the tokenizer's."""
    import shutil
    path, hf_tok = qwen_tokenizer
    ids = {k: hf_tok.token_to_id(t) for k, t in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                                                 ("vision_start_token_id", "<|vision_start|>"),
                                                 ("vision_end_token_id", "<|vision_end|>"))}
    torch.manual_seed(5)
    cfg = transformers.Qwen3VLConfig(vision_config=VISION, text_config=dict(TEXT, vocab_size=hf_tok.get_vocab_size()),
                                     **ids)
    cfg._attn_implementation = "eager"
    hf = randomize(transformers.Qwen3VLForConditionalGeneration(cfg), 5).eval()
    d = tmp_path_factory.mktemp("qwen3_vl_host")
    hf.save_pretrained(d)
    shutil.copy(path / "tokenizer.json", d)
    return d, hf


@pytest.mark.parametrize("T,H,W", [(4, 64, 96), (6, 96, 64), (3, 64, 64)])
def test_host_logits_equal_transformers(qwen3_host, T, H, W):
    """vm.logits on the prompt the host builds (timestamps, wrappers, DeepStack, M-RoPE) against transformers' whole
    model on the same expanded ids and patches: float32, 1e-4 (the tower's and decoder's tolerance: the same
    arithmetic in another order); 3 frames pad to 2 groups; non-square frames."""
    import weights
    from minivtp.tokenizer import Tokenizer
    d, hf = qwen3_host
    vm, tok = weights.load_video_llm(d), Tokenizer.from_file(d)
    frames = torch.randint(0, 256, (T, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(T))
    pixels = vm.preprocess(list(frames))
    ids, extra = vm.encode(tok, "What is it?")
    p = vm.prompt(ids, pixels, **extra)
    full = torch.tensor(tok.encode(qwen3_vl.expand_video(extra["text"], pixels.grid, pixels.timestamps)))
    assert p.embeds.shape[1] == full.numel() and len(p.added) == len(VISION["deepstack_visual_indexes"])
    with torch.no_grad():
        want = hf(input_ids=full[None], pixel_values_videos=pixels.patches, video_grid_thw=torch.tensor([pixels.grid]),
                  mm_token_type_ids=((full == vm.image_token).long() * 2)[None]).logits[0].float()
    assert rel_err(vm.logits(ids, pixels, **extra), want) <= 1e-4


def test_host_pruning_keeps_deepstack_and_positions_consistent(qwen3_host):
    """alpha = 1 is the unpruned answer bit for bit (DeepStack rows and 3D positions carried whole); pruned, each
    rival and LLM-VTP run, every frame keeps ceil(alpha * Nv) tokens and the timestamps' rows stay."""
    import math

    import weights
    from minivtp.generate import Method, generate
    from minivtp.rivals import FastV, LookM
    from minivtp.tokenizer import Tokenizer
    d, _ = qwen3_host
    vm, tok = weights.load_video_llm(d), Tokenizer.from_file(d)
    frames = torch.randint(0, 256, (4, 64, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    pixels = vm.preprocess(list(frames))
    ids, extra = vm.encode(tok, "Why?")
    p = vm.prompt(ids, pixels, **extra)
    plain = generate(vm.llm, p.embeds, 4, positions=p.positions, added=p.added)
    full = generate(vm.llm, p.embeds, 4, video=p.video, alpha=1.0, layer=1, positions=p.positions, added=p.added)
    assert torch.equal(full.tokens, plain.tokens) and torch.equal(full.logits, plain.logits)
    video_rows = set(p.video.rows().tolist())
    for method in (Method(alpha=0.25, layer=1), FastV(alpha=0.25, layer=1), LookM(recent=0.2, important=0.2)):
        out = generate(vm.llm, p.embeds, 3, video=p.video, method=method, positions=p.positions, added=p.added)
        assert 1 <= len(out.tokens) <= 3
        if isinstance(method, Method):
            per_frame = [sum(1 for r in out.kept.tolist() if s <= r < s + p.video.tokens_per_frame)
                         for s in p.video.frame_starts]
            assert per_frame == [math.ceil(0.25 * p.video.tokens_per_frame)] * p.video.frames
            text_rows = set(range(p.embeds.shape[1])) - video_rows
            assert text_rows <= set(out.pruning.rows.tolist())  # timestamps, wrappers, question: all kept


def test_answer_and_eval_run_on_qwen3_vl(qwen3_host, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import save_file
    d, _ = qwen3_host
    root = Path(__file__).resolve().parents[1]
    video = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (8, 64, 96, 3), dtype=torch.uint8)}, video)
    base = [sys.executable, "-m", "minivtp", "answer", "--weights", str(d), "--video", str(video), "--question",
            "Why?", "--max-new-tokens", "2", "--device", "cpu", "--json"]
    for extra in (["--alpha", "0.5", "--layer", "1"], ["--method", "fastv", "--alpha", "0.5", "--layer", "1"],
                  ["--method", "look-m"], ["--alpha", "0.5", "--layer", "1", "--variant", "released"]):
        run = subprocess.run(base + extra, capture_output=True, text=True, cwd=root, timeout=300)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["video_tokens"] > 0
    run = subprocess.run(base + ["--method", "prumerge+"], capture_output=True, text=True, cwd=root, timeout=300)
    assert run.returncode == 2 and "does not apply to Qwen3-VL" in run.stderr and "Traceback" not in run.stderr
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps([dict(video="clip.safetensors", question="Why?", candidates=["a", "b"],
                                          answer="a")] * 2))
    run = subprocess.run([sys.executable, "-m", "minivtp", "eval", "--weights", str(d), "--questions", str(questions),
                          "--videos", str(tmp_path), "--alpha", "0.5", "--layer", "1", "--out", str(tmp_path / "r.jsonl"),
                          "--device", "cpu", "--json", "--batch-size", "2"], capture_output=True, text=True, cwd=root,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("error" not in r and r["kept_ratio"] == 0.5 for r in rows)
