"""Qwen3-VL's pieces that stand before the decoder, each against transformers on tiny configs it builds itself:
the vision tower with its DeepStack mergers (Qwen3VLVisionModel), the loader's names (save_pretrained), the video
preprocessing (Qwen3VLVideoProcessor's own functions), the prompt with its timestamps (Qwen3VLProcessor's
expansion, through a Qwen-shaped byte-level tokenizer) and the 3D positions of every row (get_rope_index)."""

import json
import types

import pytest
import torch
from conftest import randomize, transformers

import weights
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
    cfg = vl_config(**vision)
    cfg.vision_config._attn_implementation = "eager"  # the softmax written out: another path than ours (SDPA)
    return randomize(transformers.Qwen3VLForConditionalGeneration(cfg).model.visual, seed).eval()


def tower_from(hf_visual) -> Qwen3VisionTower:
    """Ours, filled from transformers' tower through the loader's rename rules; every name used, every
    parameter filled."""
    tower = Qwen3VisionTower(Qwen3VisionConfig.from_hf(hf_visual.config.to_dict()))
    state = {weights.apply_rules(k, QWEN3_VISION_TO_OURS): v for k, v in hf_visual.state_dict().items()}
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
    with pytest.raises(weights.CheckpointError, match="model_type 'qwen2_5_vl' .* is not a Qwen3-VL checkpoint"):
        load_tower(tmp_path)
