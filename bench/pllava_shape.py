"""`python -m minivtp answer` at full PLLaVA-7B shape on one GPU, with random weights in the real key layout.

    python bench/pllava_shape.py --dir /tmp/pllava7b-random --out OUT

Writes a PLLaVA-7B-shaped checkpoint (CLIP ViT-L/14-336 + projector + Vicuna-7B, bf16, 4 shards; the language
model PEFT-wrapped with unmerged LoRA on q_proj / v_proj, r = 128, as PLLaVA trains it), a LLaMA-style
tokenizer.json with <image> = 32000, and 16 random 360 x 640 frames. Then runs the command twice, unpruned and
with LLM-VTP (alpha 0.1, M 10), and prints the JSON each run prints.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, IMAGE = 32064, 32000
C, F, L, H = 4096, 11008, 32, 32
CV, FV, LV, HV = 1024, 4096, 24, 16
R = 128


def tensors(g):
    """(name, shape) of every tensor in the checkpoint, in the PLLaVA / PEFT layout."""
    lm = "language_model.base_model.model."
    yield lm + "model.embed_tokens.weight", (VOCAB, C)
    yield lm + "model.norm.weight", (C,)
    yield lm + "lm_head.weight", (VOCAB, C)
    for i in range(L):
        p = f"{lm}model.layers.{i}."
        for proj, shape in (("q", (C, C)), ("k", (C, C)), ("v", (C, C)), ("o", (C, C))):
            if proj in "qv":
                yield p + f"self_attn.{proj}_proj.base_layer.weight", shape
                yield p + f"self_attn.{proj}_proj.lora_A.default.weight", (R, C)
                yield p + f"self_attn.{proj}_proj.lora_B.default.weight", (C, R)
            else:
                yield p + f"self_attn.{proj}_proj.weight", shape
        yield p + "mlp.gate_proj.weight", (F, C)
        yield p + "mlp.up_proj.weight", (F, C)
        yield p + "mlp.down_proj.weight", (C, F)
        yield p + "input_layernorm.weight", (C,)
        yield p + "post_attention_layernorm.weight", (C,)
    v = "vision_tower.vision_model."
    yield v + "embeddings.patch_embedding.weight", (CV, 3, 14, 14)
    yield v + "embeddings.class_embedding", (CV,)
    yield v + "embeddings.position_embedding.weight", (577, CV)
    for n in ("pre_layrnorm", "post_layernorm"):
        yield v + f"{n}.weight", (CV,)
        yield v + f"{n}.bias", (CV,)
    for i in range(LV):
        p = f"{v}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield p + f"self_attn.{proj}.weight", (CV, CV)
            yield p + f"self_attn.{proj}.bias", (CV,)
        for n in ("layer_norm1", "layer_norm2"):
            yield p + f"{n}.weight", (CV,)
            yield p + f"{n}.bias", (CV,)
        yield p + "mlp.fc1.weight", (FV, CV)
        yield p + "mlp.fc1.bias", (FV,)
        yield p + "mlp.fc2.weight", (CV, FV)
        yield p + "mlp.fc2.bias", (CV,)
    yield "multi_modal_projector.linear_1.weight", (C, CV)
    yield "multi_modal_projector.linear_1.bias", (C,)
    yield "multi_modal_projector.linear_2.weight", (C, C)
    yield "multi_modal_projector.linear_2.bias", (C,)


def write_checkpoint(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator("cuda").manual_seed(0)
    shard, shards, size, weight_map = {}, [], 0, {}
    names = list(tensors(g))
    for name, shape in names:
        if name.endswith(("norm.weight", "layernorm.weight", "layrnorm.weight", "layer_norm1.weight", "layer_norm2.weight")):
            t = torch.ones(shape, device="cuda", dtype=torch.bfloat16)
        elif name.endswith("bias") or "lora_B" in name:
            t = torch.zeros(shape, device="cuda", dtype=torch.bfloat16) if "lora_B" not in name else \
                torch.randn(shape, device="cuda", generator=g, dtype=torch.bfloat16) * 0.002
        else:
            t = torch.randn(shape, device="cuda", generator=g, dtype=torch.bfloat16) * 0.02
        shard[name] = t.cpu()
        size += t.numel() * 2
        if size > 4e9:
            shards.append(shard)
            shard, size = {}, 0
    shards.append(shard)
    for i, s in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(s, d / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in s})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = dict(model_type="llava", architectures=["PllavaForConditionalGeneration"], image_token_index=IMAGE,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                  pooling_shape=[16, 12, 12], num_frames=16, frame_shape=[24, 24], use_pooling=True,
                  vision_config=dict(model_type="clip_vision_model", hidden_size=CV, intermediate_size=FV,
                                     num_hidden_layers=LV, num_attention_heads=HV, image_size=336, patch_size=14,
                                     hidden_act="quick_gelu", layer_norm_eps=1e-5),
                  text_config=dict(model_type="llama", vocab_size=VOCAB, hidden_size=C, intermediate_size=F,
                                   num_hidden_layers=L, num_attention_heads=H, max_position_embeddings=4096,
                                   rms_norm_eps=1e-5))
    (d / "config.json").write_text(json.dumps(config))
    (d / "adapter_config.json").write_text(json.dumps({"lora_alpha": 4, "r": R}))  # PLLaVA's --lora_alpha 4
    return len(shards)


def write_tokenizer(d: Path):
    """A LLaMA-style tokenizer.json (legacy layout) padded to 32000 entries, with <image> = 32000. Its merges
    are a handful of made-up ones: the vocabulary's content does not matter for speed."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "\u2581" + "".join(chr(c) for c in range(33, 127)):
        vocab.setdefault(ch, len(vocab))
    merges = [["\u2581", "t"], ["h", "e"], ["\u2581t", "he"], ["i", "n"], ["\u2581", "a"], ["o", "n"]]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for i in range(len(vocab), IMAGE):
        vocab[f"<unused{i}>"] = i
    special = lambda content, i: dict(id=i, content=content, single_word=False, lstrip=False, rstrip=False,  # noqa: E731
                                      normalized=False, special=True)
    t = dict(version="1.0", truncation=None, padding=None,
             added_tokens=[special("<unk>", 0), special("<s>", 1), special("</s>", 2), special("<image>", IMAGE)],
             normalizer=dict(type="Sequence", normalizers=[dict(type="Prepend", prepend="\u2581"),
                             dict(type="Replace", pattern=dict(String=" "), content="\u2581")]),
             pre_tokenizer=None,
             post_processor=dict(type="TemplateProcessing", single=[dict(SpecialToken=dict(id="<s>", type_id=0)),
                                 dict(Sequence=dict(id="A", type_id=0))], pair=[], special_tokens={}),
             decoder=None,
             model=dict(type="BPE", dropout=None, unk_token="<unk>", continuing_subword_prefix=None,
                        end_of_word_suffix=None, fuse_unk=True, byte_fallback=True, vocab=vocab, merges=merges))
    (d / "tokenizer.json").write_text(json.dumps(t))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, default=Path("/tmp/pllava7b-random"))
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()
    t = time.perf_counter()
    n = write_checkpoint(args.dir)
    write_tokenizer(args.dir)
    frames = args.dir / "frames.safetensors"
    save_file({"frames": torch.randint(0, 256, (16, 360, 640, 3), dtype=torch.uint8)}, frames)
    print(f"wrote {args.dir}: {n} shards in {time.perf_counter() - t:.0f} s", flush=True)
    results = {}
    # the graph decode is the default on CUDA since round 2; --eager is the step-by-step path these runs compared
    for name, extra in (("unpruned, eager decode", ["--alpha", "1", "--eager"]),
                        ("alpha 0.1, M 10, eager decode", ["--alpha", "0.1", "--layer", "10", "--eager"]),
                        ("alpha 0.1, M 10, default (graph) decode", ["--alpha", "0.1", "--layer", "10"])):
        cmd = [sys.executable, "-m", "minivtp", "answer", "--weights", str(args.dir), "--video", str(frames),
               "--question", "What is the person doing after opening the window?", "--max-new-tokens", "72",
               "--device", "cuda", "--dtype", "bfloat16", "--json", *extra]
        if name == "alpha 0.1, M 10":
            cmd += ["--heatmap", str(args.out / "heatmap.png")]
        t = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        print(f"$ {' '.join(cmd[1:])}\n  rc {out.returncode}, {time.perf_counter() - t:.0f} s\n  {out.stdout.strip()}\n"
              f"  {out.stderr.strip()[-600:]}", flush=True)
        results[name] = json.loads(out.stdout) if out.returncode == 0 else dict(error=out.stderr[-2000:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pllava_shape.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
