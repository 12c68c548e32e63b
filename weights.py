"""Load Hugging Face checkpoints (safetensors only) into minivtp: the one entry that knows every kind.

    model = weights.load("path/to/vicuna-7b-v1.5", dtype=torch.bfloat16, device="cuda")    # a LLaMA / Qwen2 decoder
    vm = weights.load_video_llm("path/to/pllava-7b", dtype=torch.bfloat16, device="cuda")  # any video LLM host
    python weights.py path/to/checkpoint        # what is in it, or one line saying what is wrong

config.json's model_type picks the host (HOSTS below); each host's tensor names and loader live in its own file in
minivtp/hosts/, and what every loader shares for reading a directory (the shards, the index, renaming by rules,
filling a meta-device model strictly) in minivtp/checkpoint.py. The toy loads with minivtp.lab.toy.load.
"""

import sys
from pathlib import Path

import torch

from minivtp.checkpoint import (
    DERIVED,
    CheckpointError,
    hf_to_ours,
    load_into,
    open_checkpoint,
    open_shard,
    read_config,
)
from minivtp.hf_config import config_from_hf
from minivtp.hosts import instructblip, llava, llava_onevision, qwen2_5_vl, qwen3_vl, stllm, videochat2
from minivtp.model import Transformer

# config.json's model_type -> (the host file whose load(path, dtype, device, progress, lora_alpha) builds it, the
# `architectures` its config.json may name; None: any, as VideoChat2's hand-written config names its own). The one
# list of what is supported: a new host adds its row here.
HOSTS = {
    "llava": (llava, ("LlavaForConditionalGeneration", "PllavaForConditionalGeneration",
                      "TarsierForConditionalGeneration")),  # the paper's hosts: CLIP tower, LLaMA decoder
    "pllava": (llava, ("PllavaForConditionalGeneration", "LlavaForConditionalGeneration")),
    "tarsier": (llava, ("TarsierForConditionalGeneration", "LlavaForConditionalGeneration")),
    "llava_onevision": (llava_onevision, ("LlavaOnevisionForConditionalGeneration",)),  # transformers' layout
    "llava_qwen": (llava_onevision, ("LlavaQwenForCausalLM",)),  # LLaVA-NeXT's layout
    "instructblipvideo": (instructblip, ("InstructBlipVideoForConditionalGeneration",)),  # the Q-Former hosts
    "st_llm_hf": (stllm, ("STLLMForCausalLM",)),
    "videochat2": (videochat2, None),
    "qwen2_5_vl": (qwen2_5_vl, ("Qwen2_5_VLForConditionalGeneration",)),  # its ViT, M-RoPE positions and names
    "qwen3_vl": (qwen3_vl, ("Qwen3VLForConditionalGeneration",)),  # its ViT with DeepStack, timestamps, M-RoPE
}
QFORMER_HOSTS = ("instructblipvideo", "st_llm_hf", "videochat2")


def load(path, dtype=torch.float32, device="cpu", progress=None) -> Transformer:
    """A ready minivtp Transformer from a Hugging Face LLaMA checkpoint directory."""
    path, hf, files, index = open_checkpoint(path)
    cfg = config_from_hf(hf)
    with torch.device("meta"):
        model = Transformer(cfg)
    head_in_file = []

    def rename(hf_name):
        if DERIVED.fullmatch(hf_name):
            return ""
        if hf_name == "lm_head.weight" and cfg.tie_embeddings:
            head_in_file.append(hf_name)  # checked against the embedding below
            return ""
        return hf_to_ours(hf_name)

    info = load_into(model, files, rename, dtype, device, index, progress)
    if cfg.tie_embeddings:
        model.output.weight = model.embed.weight
        if head_in_file and str(device) != "meta":
            file = next(f for f in files if head_in_file[0] in open_shard(f).keys())
            head = open_shard(file).get_tensor("lm_head.weight").to(device=device, dtype=dtype)
            if not torch.equal(head, model.embed.weight):
                raise CheckpointError(f"{file.name}: tie_word_embeddings is true but lm_head.weight differs "
                                      "from model.embed_tokens.weight")
    model.load_info = dict(info, files=[f.name for f in files], path=str(path))
    return model.eval()


def check_video_llm(path, hf: dict):
    """One CheckpointError, before any tensor is read, when config.json names a model that load_video_llm does not
    build: its architecture (or model_type) by name, and the list of what is supported."""
    kind = hf.get("model_type") or ("llava" if "vision_config" in hf else None)  # old LLaVA configs name none
    if kind == "minivtp-toy":  # the toy: eval answers with it (minivtp/lab/toy.py), load_video_llm says so
        return
    archs = hf.get("architectures") or []
    archs = [archs] if isinstance(archs, str) else archs
    allowed = HOSTS[kind][1] if kind in HOSTS else ()
    if kind in HOSTS and (allowed is None or all(a in allowed for a in archs)):
        return
    named = ", ".join(a for a in archs if not allowed or a not in allowed)
    what = f"architecture {named} (model_type {kind!r})" if named else f"model_type {kind!r}"
    known = "; ".join(f"{k}: {', '.join(v) if v else 'any'}" for k, (_, v) in HOSTS.items())
    raise CheckpointError(f"{path}/config.json: {what} is not a video LLM minivtp knows; supported "
                          f"(model_type: architectures): {known}")


def load_video_llm(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None):
    """A video LLM directory -> its host (minivtp/hosts/), with the contract every host keeps (hosts/__init__.py).
    What config.json names is checked first (check_video_llm), before any shard is listed or read."""
    path = Path(path)
    hf = read_config(path) if path.is_dir() else open_checkpoint(path)  # open_checkpoint: "not a directory"
    if hf.get("model_type") == "minivtp-toy":
        raise CheckpointError(f"{path}: this is minivtp's toy video LLM, which answers through python -m minivtp demo "
                              "(from Python: minivtp.lab.toy.load(path))")
    check_video_llm(path, hf)
    host = HOSTS[hf.get("model_type") or "llava"][0]
    return host.load(path, dtype, device, progress, lora_alpha)


# --------------------------------------------------------------------------------------------------------------
# Command line: what a checkpoint holds


def describe(model: Transformer) -> str:
    cfg, info = model.cfg, model.load_info
    n_params = sum(p.numel() for p in model.parameters())
    rope = cfg.rope_scaling.get("rope_type", "default") if cfg.rope_scaling else "default"
    attn = "multi-head" if cfg.n_kv_heads == cfg.n_heads else f"grouped-query ({cfg.n_heads // cfg.n_kv_heads} q heads per kv head)"
    lines = [
        f"checkpoint   {info['path']}",
        "architecture LLaMA decoder (LlamaForCausalLM)",
        f"layers       {cfg.n_layers}",
        f"heads        {cfg.n_heads} query, {cfg.n_kv_heads} key/value: {attn}; head dim {cfg.head_dim}",
        f"width        hidden {cfg.dim}, MLP {cfg.hidden_dim}, vocab {cfg.vocab_size}",
        f"rope         theta {cfg.rope_theta:g}, {rope}; max positions {cfg.max_seq_len}",
        f"embeddings   {'tied' if cfg.tie_embeddings else 'untied'}",
        f"parameters   {n_params:,}",
        f"dtype        stored {', '.join(f'{k} x{v}' for k, v in info['stored_dtypes'].items())}",
        f"shards       {len(info['files'])}: {', '.join(info['files'])}",
    ]
    return "\n".join(lines)


def describe_video(model) -> str:
    """The language model as `describe` says it, then the video side."""
    llm = model.llm
    llm.load_info = model.load_info
    lines = describe(llm).splitlines()
    decoder = "Qwen2" if llm.cfg.qkv_bias else "LLaMA"
    lines[1] = f"architecture video LLM ({model.load_info['config'].get('model_type')}), {decoder} decoder inside"
    if hasattr(model, "qformer"):  # minivtp/hosts/: EVA tower, Q-Former, query tokens per frame
        v, q = model.vision.cfg, model.qformer.cfg
        tower = "UMT ViT" if model.arrangement == "videochat2" else "EVA ViT"
        lines.insert(2, f"vision       {tower}, {v.n_layers} layers, width {v.dim}, {v.image_size}px / "
                        f"{v.patch_size}px patches; Q-Former {q.n_layers} layers, width {q.dim}, {q.n_query} queries")
        lines.insert(3, f"video        {model.arrangement}: {model.frames} frames, {model.tokens_per_frame()} tokens "
                        f"per frame")
    elif hasattr(model, "describe_lines"):  # a host that says itself (minivtp/hosts/qwen2_5_vl.py)
        lines[2:2] = model.describe_lines()
    elif hasattr(model, "vision"):
        v = model.vision.cfg
        tower = "SigLIP" if type(model.vision).__name__ == "SiglipTower" else "CLIP ViT"
        lines.insert(2, f"vision       {tower}, {v.n_layers} layers, width {v.dim}, {v.image_size}px / {v.patch_size}px "
                        f"patches; features of layer {model.feature_layer}")
        lines.insert(3, f"video        {model.arrangement}: {model.frames} frames, {model.tokens_per_frame()} tokens "
                        f"per frame")
        if "lora_merged" in model.load_info:
            lines.insert(4, f"lora         {model.load_info['lora_merged']['targets']} adapted weights "
                            "(merged when loaded for real)")
    n_params = sum(p.numel() for p in model.parameters())
    lines = [line if not line.startswith("parameters") else f"parameters   {n_params:,} (all parts)" for line in lines]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python weights.py CHECKPOINT_DIR", file=sys.stderr)
        return 2
    try:
        # A structural check on the meta device: every name, shape and file, without reading 13 GB of data.
        hf = read_config(Path(argv[0])) if Path(argv[0]).is_dir() else {}
        video_kinds = ("minivtp-toy", *HOSTS)
        if "vision_config" in hf or hf.get("model_type") in video_kinds:
            model = load_video_llm(argv[0], device="meta")
            print(describe_video(model))
        else:
            print(describe(load(argv[0], device="meta")))
    except ValueError as e:  # CheckpointError is a ValueError, and so is a config we cannot build
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
