"""VideoChat2 (minivtp/hosts/videochat2.py, umt.py) on a tiny checkpoint in its state dict's layout: UMT against a
float64 recomputation written from VideoChat2's own code (models/blip2/vit.py; no transformers oracle exists),
the Q-Former and Vicuna against transformers' InstructBlipVideo (the same Q-Former, LoRA merged), the methods
on its 96-token clip, and eval."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_qformer_hosts import NQ, S, blip, clip, rel_err, run  # noqa: F401  (blip: the fixture)
from test_stllm import lavis_name

import weights
from minivtp.generate import generate
from minivtp.rivals import LookM

MAIN, EXTRA = 2, 3  # query tokens: VideoChat2's 32 + 64, tiny (MAIN + EXTRA = NQ: transformers' Q-Former reads them)
C, HEADS, HIDDEN, LAYERS = 32, 4, 56, 2
R, LORA_ALPHA = 2, 4.0


@pytest.fixture(scope="session")
def videochat2(blip, tmp_path_factory):
    """(directory, transformers model holding its Q-Former and Vicuna, the UMT tensors in float64)."""
    src, hf = blip
    d = tmp_path_factory.mktemp("videochat2")
    g = torch.Generator().manual_seed(21)
    r = lambda *shape: 0.3 * torch.randn(*shape, generator=g) / shape[-1] ** 0.5 * 2  # noqa: E731
    t = {"vision_encoder.encoder.patch_embed.proj.weight": r(C, 3, 1, 7, 7),
         "vision_encoder.encoder.patch_embed.proj.bias": r(C),
         "vision_layernorm.weight": 1 + 0.2 * torch.randn(C, generator=g), "vision_layernorm.bias": r(C)}
    for i in range(LAYERS):
        p = f"vision_encoder.encoder.blocks.{i}."
        t.update({p + "norm1.weight": 1 + 0.2 * torch.randn(C, generator=g), p + "norm1.bias": r(C),
                  p + "attn.qkv.weight": r(3 * C, C), p + "attn.q_bias": r(C), p + "attn.v_bias": r(C),
                  p + "attn.proj.weight": r(C, C), p + "attn.proj.bias": r(C),
                  p + "norm2.weight": 1 + 0.2 * torch.randn(C, generator=g), p + "norm2.bias": r(C),
                  p + "mlp.fc1.weight": r(HIDDEN, C), p + "mlp.fc1.bias": r(HIDDEN),
                  p + "mlp.fc2.weight": r(C, HIDDEN), p + "mlp.fc2.bias": r(C)})
    umt = {k: v.double() for k, v in t.items()}
    state = hf.state_dict()
    for k, v in state.items():
        if k.startswith("qformer.") and not k.endswith("position_ids"):
            t[lavis_name(k).replace("model.stllm_model.Qformer.", "qformer.")] = v.clone()
    t["query_tokens"] = state["query_tokens"][:, :MAIN].clone()
    t["extra_query_tokens"] = state["query_tokens"][:, MAIN:].clone()
    t["llama_proj.weight"] = state["language_projection.weight"]
    t["llama_proj.bias"] = state["language_projection.bias"]
    for k, v in state.items():  # Vicuna, PEFT-wrapped, LoRA on q and v: base = W - scale * B A, so merged is W
        if not k.startswith("language_model."):
            continue
        name = "llama_model.base_model.model." + k[len("language_model."):]
        if k.endswith(("q_proj.weight", "v_proj.weight")):
            A, B = r(R, v.shape[1]), r(v.shape[0], R)
            stem = name[: -len(".weight")]
            t[stem + ".base_layer.weight"] = (v.double() - (LORA_ALPHA / R) * (B.double() @ A.double())).float()
            t[stem + ".lora_A.default.weight"], t[stem + ".lora_B.default.weight"] = A, B
        else:
            t[name] = v.clone()
    save_file({k: v.contiguous() for k, v in t.items()}, d / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    text = dict(cfg["text_config"], model_type="videochat2", lora_alpha=LORA_ALPHA, num_query_tokens=MAIN,
                extra_num_query_tokens=EXTRA, num_frames=4, qformer_config=cfg["qformer_config"],
                umt_config=dict(dim=C, n_layers=LAYERS, n_heads=HEADS, hidden_dim=HIDDEN, image_size=S, patch_size=7))
    (d / "config.json").write_text(json.dumps(text))
    (d / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (d / "qformer_tokenizer").mkdir()
    (d / "qformer_tokenizer" / "vocab.txt").write_bytes((src / "qformer_tokenizer" / "vocab.txt").read_bytes())
    return d, hf, umt


def their_sinusoid_table(n_position, d_hid, ckpt_num_frame=-1, cur_frame=12):
    """vit.py:163-194, get_sinusoid_encoding_table, as written there (numpy, then torch)."""
    def get_position_angle_vec(position):
        return [position / np.power(10000, 2 * (hid_j // 2) / d_hid) for hid_j in range(d_hid)]
    if ckpt_num_frame != -1 and ckpt_num_frame != cur_frame:
        T, new_T = ckpt_num_frame, cur_frame
        n_position = n_position // new_T * T
        table = np.array([get_position_angle_vec(pos_i) for pos_i in range(n_position)])
        table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
        table = torch.tensor(table, dtype=torch.float).unsqueeze(0)
        P = int((n_position // T) ** 0.5)
        table = table.reshape(-1, T, P, P, d_hid).permute(0, 2, 3, 4, 1).reshape(-1, d_hid, T)
        table = torch.nn.functional.interpolate(table, size=new_T, mode="linear")
        return table.reshape(1, P, P, d_hid, new_T).permute(0, 4, 1, 2, 3).flatten(1, 3)
    table = np.array([get_position_angle_vec(pos_i) for pos_i in range(n_position)])
    table[:, 0::2], table[:, 1::2] = np.sin(table[:, 0::2]), np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float).unsqueeze(0)


def oracle_umt(w, pixels):
    """PretrainVisionTransformerEncoder.forward_features (vit.py:301-320), B = 1, float64, then vision_layernorm."""
    F = torch.nn.functional
    x = pixels.double().permute(1, 0, 2, 3)[None]  # [B, C, T, H, W], as encode_img permutes
    T = x.shape[2]
    p = "vision_encoder.encoder.patch_embed.proj."
    x = F.conv3d(x, w[p + "weight"], w[p + "bias"], stride=(1, 7, 7)).flatten(2).transpose(1, 2)
    P = x.shape[1] // T
    if T == 1:  # use_image: img_pos_embed, the table of one frame
        x = x + their_sinusoid_table(P, C).double()
    else:
        x = x + their_sinusoid_table(T * P, C, ckpt_num_frame=4, cur_frame=T).double()
    for i in range(LAYERS):
        p = f"vision_encoder.encoder.blocks.{i}."
        h = F.layer_norm(x, (C,), w[p + "norm1.weight"], w[p + "norm1.bias"], 1e-6)
        bias = torch.cat((w[p + "attn.q_bias"], torch.zeros_like(w[p + "attn.v_bias"]), w[p + "attn.v_bias"]))
        qkv = F.linear(h, w[p + "attn.qkv.weight"], bias).reshape(1, -1, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (C // HEADS) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        x = x + F.linear((a @ v).transpose(1, 2).reshape(1, -1, C), w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (C,), w[p + "norm2.weight"], w[p + "norm2.bias"], 1e-6)
        x = x + F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])), w[p + "mlp.fc2.weight"],
                         w[p + "mlp.fc2.bias"])
    return F.layer_norm(x[0], (C,), w["vision_layernorm.weight"], w["vision_layernorm.bias"], 1e-12)  # (T*P, C)


def test_umt_equals_float64_recomputation_of_videochat2_code(videochat2):
    d, _, w = videochat2
    model = weights.load_video_llm(d)
    assert model.arrangement == "videochat2" and model.tokens_per_frame() == MAIN + EXTRA
    for T in (1, 4, 6, 16):  # 4: the trained frame count; 6 and 16: the table stretched in time
        px = torch.randn(T, 3, S, S, generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            ours = model.vision(px)
        ref = oracle_umt(w, px)
        # float32 against float64; theirs builds the table in float32, ours too: 1e-5 of the largest value
        assert ours.shape == ref.shape == (T * 16, C) and rel_err(ours.double(), ref) <= 1e-5, T


def test_whole_prompt_logits_equal_oracle_umt_then_transformers(videochat2):
    d, hf, w = videochat2
    model = weights.load_video_llm(d)
    assert model.load_info["lora_merged"]["lora_alpha"] == LORA_ALPHA
    from minivtp.tokenizer import Tokenizer
    tok = Tokenizer.from_file(d)
    ids = torch.tensor(model.prompt_ids(tok, "Question: why?\nOptions:\n(A) yes\n(B) no", mvbench=True))
    q = model.qformer_ids("Question: why?")  # (MVBench gives it the system prompt: 161 ids, past this tiny one's 64)
    px = torch.randn(4, 3, S, S)
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, px, qformer_ids=q)
        ours = model.llm.forward_embeds(embeds)
        image = oracle_umt(w, px).float()[None]  # the whole clip: ONE image of T*P rows for the Q-Former
        query = hf.qformer(input_ids=q, query_embeds=hf.query_tokens, encoder_hidden_states=image).last_hidden_state
        video = hf.language_projection(query[:, :NQ])  # (1, 96 in VideoChat2, here 5, C)
        i = span.start
        e = hf.language_model.get_input_embeddings()
        ref = hf.language_model(inputs_embeds=torch.cat([e(ids[:i])[None], video, e(ids[i + 1:])[None]], 1)).logits
    assert (span.frames, span.tokens_per_frame) == (1, NQ) and span.start > 0  # the system prompt comes first
    assert ours.shape == ref.shape and rel_err(ours, ref) <= 1e-4


def test_methods_on_the_clip_as_one_frame(videochat2):
    d, _, _ = videochat2
    model = weights.load_video_llm(d)
    from minivtp.tokenizer import Tokenizer
    tok = Tokenizer.from_file(d)
    ids = torch.tensor(model.prompt_ids(tok, "What happens?"))
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, torch.randn(4, 3, S, S), qformer_ids=model.qformer_ids("What happens?"))
    plain = generate(model.llm, embeds, 5)
    assert generate(model.llm, embeds, 5, video=span, alpha=1.0, layer=2).tokens.tolist() == plain.tokens.tolist()
    out = generate(model.llm, embeds, 5, video=span, alpha=0.4, layer=1)
    assert out.kept.numel() == 2 and ((out.kept >= span.start) & (out.kept < span.end)).all()  # ceil(0.4 * 5)
    assert len(generate(model.llm, embeds, 3, video=span, method=LookM(recent=0.2, important=0.2)).tokens) >= 1


def test_cli_eval_and_prumerge_on_videochat2(videochat2, tmp_path):
    d, _, _ = videochat2
    clip(tmp_path / "a.safetensors", 7)
    qs = [dict(video="a.safetensors", question="What is it?", candidates=["a cat", "a dog"], answer="a dog")]
    (tmp_path / "q.json").write_text(json.dumps(qs))
    out = run("eval", "--weights", d, "--questions", tmp_path / "q.json", "--videos", tmp_path, "--alpha", 0.4,
              "--layer", 1, "--out", tmp_path / "r.jsonl", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    row = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert "error" not in row and row["kept_ratio"] == 2 / NQ
    out = run("eval", "--weights", d, "--questions", tmp_path / "q.json", "--videos", tmp_path, "--method",
              "prumerge+", "--out", tmp_path / "p.jsonl", "--device", "cpu")
    assert out.returncode == 2 and "PruMerge+ cannot run on a Q-Former host" in out.stderr


def test_weights_cli_describes_videochat2(videochat2):
    from test_qformer_hosts import run_main
    d, _, _ = videochat2
    out = run_main(weights.main, d)  # python weights.py DIR
    assert out.returncode == 0, out.stderr
    assert "UMT ViT, 2 layers" in out.stdout and "videochat2: 4 frames, 5 tokens per frame" in out.stdout
