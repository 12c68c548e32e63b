"""ST-LLM (minivtp/hosts/stllm.py) on a tiny checkpoint in its released layout: the BT-Adapter against a float64
recomputation written from ST-LLM's own code (eva_btadapter.py; there is no transformers oracle for it), the rest
of the model against transformers' InstructBlipVideo (whose Q-Former and Vicuna ST-LLM's are), and the methods."""

import json
import re

import pytest
import torch
from conftest import randomize, transformers  # noqa: F401  (transformers: skip cleanly without the oracle)
from einops import rearrange
from safetensors.torch import save_file
from test_qformer_hosts import NQ, S, blip, qformer_input, rel_err, run, clip  # noqa: F401  (blip: the fixture)

import weights
from minivtp.generate import generate
from minivtp.rivals import FastV, LookM

DEPTH = 2  # BT-Adapter depth: beside the last 2 of the tiny tower's 3 blocks


def lavis_name(name: str):
    """transformers' InstructBlipVideo name -> ST-LLM's (LAVIS's), under ST-LLM's prefixes."""
    v = [(r"vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
         (r"vision_model\.embeddings\.class_embedding", "visual_encoder.cls_token"),
         (r"vision_model\.embeddings\.position_embedding", "visual_encoder.pos_embed"),
         (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
         (r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv."),
         (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm([12])\.", r"visual_encoder.blocks.\1.norm\2."),
         (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
         (r"vision_model\.post_layernorm\.", "ln_vision."),
         (r"query_tokens", "query_tokens"), (r"language_projection\.", "llama_proj."),
         (r"qformer\.embeddings\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
         (r"qformer\.(.*)\.(attention|crossattention)\.attention\.", r"Qformer.bert.\1.\2.self."),
         (r"qformer\.", "Qformer.bert.")]
    for p, r in v:
        if re.match(p, name):
            return "model.stllm_model." + re.sub("^" + p, r, name)
    return re.sub(r"^language_model\.", "", name)  # model.layers.*, lm_head.*


def split_qkv_bias(tensors):
    """LAVIS: q_bias and v_bias, no k bias (softmax ignores transformers' k part, so the model is the same)."""
    for name in [n for n in tensors if n.endswith("attn.qkv.bias")]:
        b = tensors.pop(name)
        C = b.shape[0] // 3
        tensors[name.replace("qkv.bias", "q_bias")], tensors[name.replace("qkv.bias", "v_bias")] = b[:C], b[2 * C:]


@pytest.fixture(scope="session")
def stllm(blip, tmp_path_factory):
    """(ST-LLM directory, transformers model its Q-Former / LLM weights came from, the stored tensors)."""
    src, hf = blip
    d = tmp_path_factory.mktemp("stllm")
    tensors = {lavis_name(k): v.clone().contiguous() for k, v in hf.state_dict().items()
               if not k.endswith("position_ids")}
    split_qkv_bias(tensors)
    cfg = json.loads((src / "config.json").read_text())
    C = cfg["vision_config"]["hidden_size"]
    hidden = cfg["vision_config"]["intermediate_size"]
    g = torch.Generator().manual_seed(11)
    r = lambda *shape: 0.3 * torch.randn(*shape, generator=g) / shape[-1] ** 0.5 * 2  # noqa: E731
    pre = "model.stllm_model.visual_encoder."
    adapter = {pre + "BTAdapter_cls": r(1, 1, C), pre + "BTAdapter_position.weight": r(64, C)}
    for j in range(DEPTH):
        for kind in ("T", "S"):
            p = f"{pre}BTAdapter_{kind}.{j}."
            adapter.update({p + "norm1.weight": 1 + 0.2 * torch.randn(C, generator=g), p + "norm1.bias": r(C),
                            p + "attn.qkv.weight": r(3 * C, C), p + "attn.q_bias": r(C), p + "attn.v_bias": r(C),
                            p + "attn.proj.weight": r(C, C), p + "attn.proj.bias": r(C)})
            if kind == "T":
                adapter.update({p + "temporal_fc.weight": r(C, C), p + "temporal_fc.bias": r(C)})
            else:
                adapter.update({p + "norm2.weight": 1 + 0.2 * torch.randn(C, generator=g), p + "norm2.bias": r(C),
                                p + "mlp.fc1.weight": r(hidden, C), p + "mlp.fc1.bias": r(hidden),
                                p + "mlp.fc2.weight": r(C, hidden), p + "mlp.fc2.bias": r(C)})
    tensors.update(adapter)
    L = cfg["text_config"]["hidden_size"]
    tensors["model.stllm_model.mvm_decoder.head.weight"] = r(L, L)  # training only
    tensors["model.stllm_model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()  # the alias
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    text = dict(cfg["text_config"], model_type="st_llm_hf", architectures=["STLLMForCausalLM"])
    text.update(vision_config=cfg["vision_config"], qformer_config=cfg["qformer_config"], num_query_tokens=NQ,
                btadapter_depth=DEPTH, num_frames=4)
    (d / "config.json").write_text(json.dumps(text))
    for f in ("tokenizer.json",):
        (d / f).write_bytes((src / f).read_bytes())
    (d / "qformer_tokenizer").mkdir()
    (d / "qformer_tokenizer" / "vocab.txt").write_bytes((src / "qformer_tokenizer" / "vocab.txt").read_bytes())
    return d, hf, {k: v.double() for k, v in tensors.items()}


# ---- the float64 oracle, from ST-LLM's eva_btadapter.py and eva_vit.py, read off the stored tensors ---------------


def oracle_tower(w, pixels, heads, depth, eps=1e-6):
    """EVAVisionTransformer_BTAdapter.forward_features with B = 1, in float64, then ln_vision; `w` is the
    checkpoint's tensors by ST-LLM's names. Written from their code line by line: x is (b t) l d."""
    P = "model.stllm_model.visual_encoder."
    ln = lambda x, p: torch.nn.functional.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], eps)  # noqa

    def attn(x, p):  # eva_vit.Attention: qkv with bias (q_bias, 0, v_bias), softmax(q k^T * scale) v, proj
        B, N, C = x.shape
        bias = torch.cat([w[p + ".q_bias"], torch.zeros_like(w[p + ".v_bias"]), w[p + ".v_bias"]])
        qkv = torch.nn.functional.linear(x, w[p + ".qkv.weight"], bias)
        qkv = qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return torch.nn.functional.linear((a @ v).transpose(1, 2).reshape(B, N, C), w[p + ".proj.weight"],
                                          w[p + ".proj.bias"])

    def mlp(x, p):
        h = torch.nn.functional.gelu(torch.nn.functional.linear(x, w[p + ".fc1.weight"], w[p + ".fc1.bias"]))
        return torch.nn.functional.linear(h, w[p + ".fc2.weight"], w[p + ".fc2.bias"])

    def block(x, p):
        x = x + attn(ln(x, p + ".norm1"), p + ".attn")
        return x + mlp(ln(x, p + ".norm2"), p + ".mlp")

    def temporal(x, p, T):  # BTAdapter_Temp.forward
        residual, init_cls_token, query_t = x[:, 1:, :], x[:, :1, :], x[:, 1:, :]
        b, pt, m = query_t.size()
        p_, t = pt // T, T
        x = query_t.reshape(b * p_, t, m)
        x = attn(ln(x, p + ".norm1"), p + ".attn")
        x = torch.nn.functional.linear(x, w[p + ".temporal_fc.weight"], w[p + ".temporal_fc.bias"])
        x = x.reshape(b, p_ * t, m) + residual
        return torch.cat((init_cls_token, x), 1)

    def spatial(x, p, T):  # BTAdapter_Spatial.forward
        residual, init_cls_token, query_s = x, x[:, :1, :], x[:, 1:, :]
        b, pt, m = query_s.size()
        p_, t = pt // T, T
        cls_token = init_cls_token.unsqueeze(1).repeat(1, t, 1, 1).reshape(b * t, 1, m)
        query_s = rearrange(query_s, "b (p t) m -> (b t) p m", p=p_, t=t)
        x = torch.cat((cls_token, query_s), 1)
        res_spatial = attn(ln(x, p + ".norm1"), p + ".attn")
        cls_token = res_spatial[:, :1, :].reshape(b, t, 1, m).mean(1)
        res_spatial = rearrange(res_spatial[:, 1:, :], "(b t) p m -> b (p t) m", p=p_, t=t)
        x = residual + torch.cat((cls_token, res_spatial), 1)
        return x + mlp(ln(x, p + ".norm2"), p + ".mlp")

    T = pixels.shape[0]
    x = torch.nn.functional.conv2d(pixels.double(), w[P + "patch_embed.proj.weight"], w[P + "patch_embed.proj.bias"],
                                   stride=w[P + "patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat((w[P + "cls_token"].expand(T, -1, -1), x), dim=1) + w[P + "pos_embed"]
    n = len({k.split(".")[4] for k in w if k.startswith(P + "blocks.")})
    assert n == 3
    branch_x = None
    for idx in range(n):
        x = block(x, f"{P}blocks.{idx}")
        if idx >= n - depth:
            num_layer = idx + depth - n
            xb = rearrange(x, "(b t) l d -> b t l d", t=T)  # forward_branch
            if branch_x is not None:
                cls_branch = xb[:, :, 0].mean(dim=1).unsqueeze(1)
                xb = rearrange(xb[:, :, 1:], "b t l d -> b (l t) d")
                xb = torch.cat((cls_branch, xb), dim=1) + branch_x
            if num_layer == 0:  # init_input
                cls_x = xb[:, :, 0].mean(dim=1).unsqueeze(1)
                z = rearrange(xb[:, :, 1:, :], "b t l d -> (b t) l d")
                z = torch.cat((w[P + "BTAdapter_cls"].expand(z.size(0), 1, -1), z), dim=1) + w[P + "pos_embed"]
                cls_b = z[:1, 0, :].unsqueeze(1)
                z = rearrange(z[:, 1:, :], "(b t) l d -> (b l) t d", b=1)
                z = z + w[P + "BTAdapter_position.weight"][torch.arange(z.size(1))][None]
                z = rearrange(z, "(b l) t d -> b (l t) d", b=1)
                xb = torch.cat(((cls_x + cls_b) / 2, z), dim=1)
            xb = temporal(xb, f"{P}BTAdapter_T.{num_layer}", T)
            branch_x = spatial(xb, f"{P}BTAdapter_S.{num_layer}", T)
    p_ = x.size(1) - 1
    branch_cls, branch_patch = branch_x[:, 0], branch_x[:, 1:]
    branch_patch = rearrange(branch_patch, "b (p t) m -> (b t) p m", p=p_)
    branch_cls = branch_cls.repeat(1, T).view(branch_cls.size(0) * T, -1).unsqueeze(1)
    x = (x + torch.cat((branch_cls, branch_patch), dim=1)) / 2
    return ln(x, "model.stllm_model.ln_vision")


def test_bt_adapter_tower_equals_float64_recomputation_of_st_llm_code(stllm):
    d, hf, w = stllm
    model = weights.load_video_llm(d)
    assert model.arrangement == "st-llm" and model.vision.adapter.depth == DEPTH
    heads = json.loads((d / "config.json").read_text())["vision_config"]["num_attention_heads"]
    for T in (1, 3, 4):
        px = torch.randn(T, 3, S, S, generator=torch.Generator().manual_seed(T))
        with torch.no_grad():
            ours = model.vision(px)
        ref = oracle_tower(w, px, heads, DEPTH)
        # float32 against float64: 1e-5 of the largest value is ~10 float32 roundings through 3 blocks
        assert ours.shape == ref.shape and rel_err(ours.double(), ref) <= 1e-5, T
    # the adapter matters: without it the tower is InstructBLIP's, and different
    with torch.no_grad():
        plain = hf.vision_model(px).last_hidden_state
    assert rel_err(ours, plain) > 1e-2


def test_whole_prompt_logits_equal_oracle_tower_then_transformers(stllm):
    d, hf, w = stllm
    model = weights.load_video_llm(d)
    from minivtp.tokenizer import Tokenizer
    tok = Tokenizer.from_file(d)
    question = "What is the man doing in the video?"
    ids = torch.tensor(model.prompt_ids(tok, question, mvbench=True))
    assert ids[0].item() == -1 and ids[1].item() == tok.eos  # the placeholder, then </s> as ST-LLM's BOS
    q = model.qformer_ids(model.qformer_text(question))
    px = torch.randn(4, 3, S, S)
    heads = json.loads((d / "config.json").read_text())["vision_config"]["num_attention_heads"]
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, px, qformer_ids=q)
        ours = model.llm.forward_embeds(embeds)
        image = oracle_tower(w, px, heads, DEPTH).float()
        query = hf.qformer(input_ids=q.repeat(4, 1), query_embeds=hf.query_tokens.expand(4, -1, -1),
                           encoder_hidden_states=image).last_hidden_state[:, :NQ]
        video = hf.language_projection(query).reshape(1, 4 * NQ, -1)
        text = hf.language_model.get_input_embeddings()(ids[1:])[None]
        ref = hf.language_model(inputs_embeds=torch.cat([video, text], dim=1)).logits
    assert (span.start, span.frames, span.tokens_per_frame) == (0, 4, NQ)
    assert ours.shape == ref.shape and rel_err(ours, ref) <= 1e-4


def test_methods_on_st_llm(stllm):
    d, _, _ = stllm
    model = weights.load_video_llm(d)
    from minivtp.tokenizer import Tokenizer
    tok = Tokenizer.from_file(d)
    ids = torch.tensor(model.prompt_ids(tok, "Why?"))
    with torch.no_grad():
        embeds, span, _ = model.prompt(ids, torch.randn(4, 3, S, S), qformer_ids=model.qformer_ids("Why?"))
    plain = generate(model.llm, embeds, 5)
    assert generate(model.llm, embeds, 5, video=span, alpha=1.0, layer=2).tokens.tolist() == plain.tokens.tolist()
    out = generate(model.llm, embeds, 5, video=span, alpha=0.2, layer=1)  # ceil(0.2 * 5) = 1 per frame
    assert torch.bincount((out.kept - span.start) // NQ, minlength=4).tolist() == [1, 1, 1, 1]
    assert len(generate(model.llm, embeds, 3, video=span, method=FastV(alpha=0.2, layer=1)).tokens) >= 1
    assert len(generate(model.llm, embeds, 3, video=span, method=LookM(recent=0.2, important=0.2)).tokens) >= 1


def test_st_llm_checkpoint_problems_are_named(stllm, tmp_path):
    from safetensors.torch import load_file
    d, _, _ = stllm
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_bytes((d / "config.json").read_bytes())
    t = load_file(d / "model.safetensors")
    t.pop("model.stllm_model.visual_encoder.BTAdapter_T.1.temporal_fc.weight")
    save_file(t, bad / "model.safetensors")
    with pytest.raises(weights.CheckpointError, match=r"not in any file.*temporal\.1\.temporal_fc\.weight"):
        weights.load_video_llm(bad)
    t = load_file(d / "model.safetensors")
    t["model.stllm_model.visual_encoder.BTAdapter_extra.weight"] = torch.zeros(2)
    save_file(t, bad / "model.safetensors")
    with pytest.raises(weights.CheckpointError, match="BTAdapter_extra.weight does not belong"):
        weights.load_video_llm(bad)


def test_cli_answer_and_prumerge_on_st_llm(stllm, tmp_path):
    d, _, _ = stllm
    video = clip(tmp_path / "c.safetensors", 6)
    out = run("answer", "--weights", d, "--video", video, "--question", "What is he doing?", "--alpha", 0.2,
              "--layer", 2, "--max-new-tokens", 3, "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["video_tokens"] == 4 * NQ and r["kept_video_tokens"] == 4
    out = run("answer", "--weights", d, "--video", video, "--question", "Why?", "--method", "prumerge+",
              "--device", "cpu")
    assert out.returncode == 2 and out.stderr.count("error:") == 1
    assert "PruMerge+ cannot run on a Q-Former host" in out.stderr and "[CLS]" in out.stderr


def test_weights_cli_and_the_explorer_on_st_llm(stllm, tmp_path):
    from test_qformer_hosts import run_main

    from minivtp.lab import explore
    d, _, _ = stllm
    out = run_main(weights.main, d)  # python weights.py DIR
    assert out.returncode == 0, out.stderr
    assert "video        st-llm: 4 frames, 5 tokens per frame" in out.stdout and "EVA ViT, 3 layers" in out.stdout
    out = run_main(explore.main, "--weights", d, "--video", "v.mp4", "--question", "q", "--out", tmp_path / "e.html")
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "Q-Former host" in out.stderr
