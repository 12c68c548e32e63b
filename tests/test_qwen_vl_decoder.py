"""The decoder pieces Qwen2.5-VL and Qwen3-VL add to model.py (M-RoPE in both layouts, Qwen3's per-head q/k norm,
DeepStack's rows added after the first layers), each against transformers' own text model and rotary embedding.

Tiny random configs in float32, compared at 1e-4: the two implementations do the same operations in a different
order (fused attention kernels, matmul blocking), so they agree to float32 rounding (about 1e-6 relative), not bit
for bit; 1e-4 leaves room for that and still catches any wrong rotation, norm or row, which move values by 1e-1."""

import pytest
import torch

import weights
from minivtp.hf_config import config_from_hf
from minivtp.model import Config, Transformer, mrope_axes, rope_cos_sin

transformers = pytest.importorskip("transformers")

TEXT = dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, max_position_embeddings=512,
            bos_token_id=None, eos_token_id=None)


def qwen25_text(section=(2, 3, 3)):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
    return Qwen2_5_VLTextConfig(**TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                              mrope_section=list(section)))


def qwen3_text(section=(4, 2, 2)):
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    return Qwen3VLTextConfig(**TEXT, rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                                          mrope_section=list(section), mrope_interleaved=True))


def positions_3d(n_before=3, grid=(2, 2, 3), interval=4, n_after=4):
    """A prompt's (3, N) positions as get_rope_index lays them out: text, a video grid (t scaled by `interval`,
    h and w from where the text stopped), text again from the largest position + 1."""
    t, h, w = grid
    before = torch.arange(n_before).expand(3, -1)
    tt, hh, ww = torch.meshgrid(torch.arange(t) * interval, torch.arange(h), torch.arange(w), indexing="ij")
    video = torch.stack([tt, hh, ww]).reshape(3, -1) + n_before
    after = torch.arange(n_after).expand(3, -1) + video.max() + 1
    return torch.cat([before, video, after], dim=1)  # (3, N)


def ours_from(hf_model, hf_config):
    cfg = config_from_hf(hf_config.to_dict())
    model = Transformer(cfg)
    state = {weights.hf_to_ours("model." + k): v for k, v in hf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["output.weight"] and not unexpected  # a text model has no head
    return model.eval()


def test_config_reads_sections_and_layouts():
    c25, c3 = config_from_hf(qwen25_text().to_dict()), config_from_hf(qwen3_text().to_dict())
    assert (c25.mrope_section, c25.mrope_layout, c25.qkv_bias, c25.qk_norm) == ((2, 3, 3), "chunked", True, False)
    assert (c3.mrope_section, c3.mrope_layout, c3.qkv_bias, c3.qk_norm) == ((4, 2, 2), "interleaved", False, True)
    # the old spelling of Qwen2.5-VL-7B's config.json: rope_scaling {"type": "mrope", ...}
    old = dict(TEXT, model_type="qwen2_5_vl_text", rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    assert config_from_hf(old).mrope_section == (2, 3, 3) and config_from_hf(old).rope_scaling == {}
    with pytest.raises(ValueError, match="adding up to head_dim/2 = 8"):
        Config(dim=64, n_heads=4, n_kv_heads=4, head_dim=16, mrope_section=(2, 2, 2))


def test_mrope_axes_spelled_out():
    # chunked (2, 3, 3): t t h h h w w w; interleaved (4, 2, 2): t h w t h w t t
    chunked = Config(dim=64, n_heads=4, n_kv_heads=4, head_dim=16, mrope_section=(2, 3, 3))
    assert mrope_axes(chunked).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert mrope_axes(Config(dim=64, n_heads=4, n_kv_heads=4, head_dim=16, mrope_section=(4, 2, 2),
                             mrope_layout="interleaved")).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_rope_tables_equal_transformers(family):
    if family == "qwen2.5-vl":
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding as Rotary
        hf = qwen25_text()
    else:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding as Rotary
        hf = qwen3_text()
    pos = positions_3d()
    cos_hf, sin_hf = Rotary(hf)(torch.zeros(1, dtype=torch.float32), pos[:, None])  # (1, N, D)
    cos, sin = rope_cos_sin(config_from_hf(hf.to_dict()), pos)
    # the same float32 products and the same cos/sin calls, element by element: equal to the bit
    assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])
    # a text token (t = h = w) turns exactly as 1D RoPE does
    text = torch.arange(7)
    assert torch.equal(rope_cos_sin(config_from_hf(hf.to_dict()), text.expand(3, -1))[0],
                       rope_cos_sin(Config(dim=64, n_heads=4, n_kv_heads=4, head_dim=16), text)[0])


def test_qwen25_text_model_equals_transformers():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel
    torch.manual_seed(0)
    hf_cfg = qwen25_text()
    hf = Qwen2_5_VLTextModel(hf_cfg).eval()
    ours = ours_from(hf, hf_cfg)
    pos = positions_3d()
    x = torch.randn(1, pos.shape[1], 64)
    want = hf(inputs_embeds=x, position_ids=pos[:, None]).last_hidden_state
    cos, sin = ours.rope(pos)
    rows = torch.arange(pos.shape[1])  # the causal mask orders rows, not M-RoPE positions
    got = ours.norm(ours.forward_layers(x, cos, sin, rows))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_qwen3_text_model_with_deepstack_equals_transformers():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel
    torch.manual_seed(1)
    hf_cfg = qwen3_text()
    hf = Qwen3VLTextModel(hf_cfg).eval()
    ours = ours_from(hf, hf_cfg)
    assert ours.layers[0].attn.qk_norm
    with torch.no_grad():  # the norms' gains away from 1, so a missing norm would show
        for layer in ours.layers:
            layer.attn.q_norm.weight.uniform_(0.5, 1.5), layer.attn.k_norm.weight.uniform_(0.5, 1.5)
        for i, layer in enumerate(ours.layers):
            hf.layers[i].self_attn.q_norm.weight.copy_(layer.attn.q_norm.weight)
            hf.layers[i].self_attn.k_norm.weight.copy_(layer.attn.k_norm.weight)
    pos = positions_3d()
    N = pos.shape[1]
    x = torch.randn(1, N, 64)
    video = torch.zeros(N, dtype=torch.bool)
    video[3:15] = True  # the 2 x 2 x 3 grid's rows
    deep = [torch.randn(12, 64) for _ in range(2)]  # DeepStack: features for layers 1 and 2
    want = hf(inputs_embeds=x, position_ids=pos[:, None], visual_pos_masks=video[None],
              deepstack_visual_embeds=deep).last_hidden_state
    added = {}
    for i, d in enumerate(deep):
        added[i] = torch.zeros(N, 64)
        added[i][video] = d
    cos, sin = ours.rope(pos)
    got = ours.norm(ours.forward_layers(x, cos, sin, torch.arange(N), added=added))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and the features matter: without them the output moves far past the tolerance
    assert (ours.norm(ours.forward_layers(x, cos, sin, torch.arange(N))) - want).abs().max() > 1e-2


@pytest.mark.parametrize("layer", [1, 2])
def test_pruning_drops_the_deepstack_rows_of_dropped_tokens(layer):
    """Qwen3-VL pruned at layer M: the DeepStack features still to come (after layers M+1..) are added at the kept
    video rows only. Against transformers' decoder layers run by hand: every row up to M, then the kept rows at
    their own 3D positions, each with its own features. alpha = 1 equals the unpruned model exactly."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel
    from minivtp.generate import Method, generate, prefill
    from minivtp.vtp import VideoSpan
    torch.manual_seed(2)
    hf_cfg = qwen3_text()
    hf_cfg._attn_implementation = "eager"
    hf = Qwen3VLTextModel(hf_cfg).eval()
    ours = ours_from(hf, hf_cfg)
    torch.nn.init.normal_(ours.output.weight, std=0.5)
    pos = positions_3d()  # 3 text rows, a 2 x (2 x 3) video at rows 3..14, 4 text rows
    N = pos.shape[1]
    x = torch.randn(1, N, 64)
    video = VideoSpan(3, 2, 6)
    deep = [torch.randn(12, 64) for _ in range(2)]
    added = {i: torch.zeros(N, 64).index_copy(0, torch.arange(3, 15), d) for i, d in enumerate(deep)}
    caches = ours.new_caches(max_len=N + 1)
    logits, pruning = prefill(ours, x, caches, video, Method(alpha=0.5, layer=layer), positions=pos, added=added)
    rows = pruning.rows
    is_video = (rows >= 3) & (rows < 15)

    def layers(h, p, start, stop, feats):
        n = h.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        cos_sin = hf.rotary_emb(h, p[:, None])
        for i in range(start, stop):
            h = hf.layers[i](h, attention_mask=mask, position_embeddings=cos_sin)
            if i < len(feats):  # transformers' _deepstack_process: the features added at the visual rows
                h = hf._deepstack_process(h, feats[i][1][None], feats[i][0])
        return h

    with torch.no_grad():
        every = [(d, torch.arange(N).ge(3) & torch.arange(N).lt(15)) for d in deep]
        h = layers(x, pos, 0, layer, every)
        kept = [(d[rows[is_video] - 3], is_video) for d in deep]  # the kept tokens' own features, at their rows
        h = layers(h[:, rows], pos[:, rows], layer, 3, kept)
        want = ours.output(hf.norm(h))[0, -1]
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)
    full = generate(ours, x, 4, video=video, alpha=1.0, layer=layer, positions=pos, added=added)
    plain = generate(ours, x, 4, positions=pos, added=added)
    assert torch.equal(full.tokens, plain.tokens) and torch.equal(full.logits, plain.logits)


def test_released_scores_before_rope_go_through_qwen3s_norms():
    """The released variant's scores (q, k before RoPE) on a model with per-head q/k norms: at position 0 for every
    row RoPE turns nothing, so they equal the paper's after-RoPE scores, norms and all (a path that skipped the
    norms would not)."""
    from minivtp import vtp
    torch.manual_seed(3)
    cfg = config_from_hf(qwen3_text().to_dict())
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.q_norm.weight.uniform_(0.2, 3.0), layer.attn.k_norm.weight.uniform_(0.2, 3.0)
    x = torch.randn(1, 9, 64)
    zero = torch.zeros(3, 9, dtype=torch.long)
    cos, sin = model.rope(zero)
    caches = model.new_caches(max_len=9)
    rows = torch.arange(9)
    with torch.no_grad():
        model.forward_layers(x, cos, sin, rows, caches, stop=1)
        after = vtp.layer_attention(model.layers[0], x, cos, sin, rows, caches[0], causal=False)
        before = vtp.layer_attention(model.layers[0], x, cos, sin, rows, caches[0], rope="before", causal=False)
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)
