"""Load Hugging Face LLaMA / Vicuna checkpoints (safetensors only) into minivtp.

    model = weights.load("path/to/vicuna-7b-v1.5", dtype=torch.bfloat16, device="cuda")
    python weights.py path/to/checkpoint        # what is in it, or one line saying what is wrong

The directory is what `save_pretrained` writes: `config.json` plus either `model.safetensors` or shards listed
in `model.safetensors.index.json`. The loader is loud on purpose: every tensor in the files must map to a
parameter, every parameter must be filled, every shape must match, and each error names the tensor and the
file. Pickle checkpoints (`pytorch_model.bin`) are refused: unpickling runs code from the file.

The model is built on the meta device (no memory), then filled shard by shard, tensor by tensor, so a 7B
checkpoint never exists twice in memory.
"""

import json
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from minivtp.model import Config, Transformer


class CheckpointError(ValueError):
    pass


# How Hugging Face names map to ours. {i} is the layer index; .weight / .bias follow.
HF_TO_OURS = [
    (r"model\.embed_tokens\.", "embed."),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.", r"layers.\1.attn.wq."),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.", r"layers.\1.attn.wk."),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.", r"layers.\1.attn.wv."),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.", r"layers.\1.attn.wo."),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.", r"layers.\1.mlp.w_gate."),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.", r"layers.\1.mlp.w_up."),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.", r"layers.\1.mlp.w_down."),
    (r"model\.layers\.(\d+)\.input_layernorm\.", r"layers.\1.attn_norm."),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.", r"layers.\1.mlp_norm."),
    (r"model\.norm\.", "norm."),
    (r"lm_head\.", "output."),
]
# Old conversions stored RoPE's inverse frequencies as tensors. They are a function of the config, which
# is where I take them from; these keys are recognised and deliberately not loaded.
DERIVED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")

PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "consolidated.00.pth")


def hf_to_ours(name: str):
    for pattern, repl in HF_TO_OURS:
        ours, n = re.subn("^" + pattern, repl, name)
        if n:
            return ours
    return None


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face checkpoint directory?)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None


def shard_files(path: Path) -> list:
    """The safetensors files of a checkpoint, in load order. Refuses pickle-only directories."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (path / name).is_file():
                raise CheckpointError(f"{index}: lists shard {name}, which is not in {path}")
        return [path / name for name in files]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = [n for n in PICKLE_NAMES if (path / n).exists()] + [p.name for p in path.glob("*.bin")]
    if pickles:
        raise CheckpointError(
            f"{path}: only pickle checkpoints ({', '.join(sorted(set(pickles)))}); minivtp loads safetensors only, "
            "because unpickling can run code. Convert once with transformers: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir, safe_serialization=True)")
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def open_shard(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated / corrupt files
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def set_parameter(model: nn.Module, name: str, tensor: torch.Tensor):
    module_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(module_name), leaf, nn.Parameter(tensor, requires_grad=False))


def load_into(model: nn.Module, files: list, rename, dtype, device, index: dict = None, progress=None) -> dict:
    """Fill a meta-device `model` from safetensors `files`, strictly.

    `rename(hf_name)` gives our parameter name, None for a tensor we do not know, or "" for one that is
    recognised and deliberately skipped. Returns {"stored_dtypes": {...}, "n_tensors": int}.
    """
    expected = dict(model.named_parameters())  # ties appear once
    filled, stored = {}, {}
    for i, file in enumerate(files):
        if progress:
            progress(i, len(files), file)
        with open_shard(file) as f:
            for hf_name in f.keys():
                ours = rename(hf_name)
                if ours == "":
                    continue
                if ours is None or ours not in expected:
                    raise CheckpointError(f"{file.name}: tensor {hf_name} does not belong to this model "
                                          f"(no parameter {ours or '?'} in it)")
                if index is not None and index.get(hf_name) != file.name:
                    raise CheckpointError(f"{file.name}: tensor {hf_name} is not listed for this shard in the index")
                if ours in filled:
                    raise CheckpointError(f"{file.name}: tensor {hf_name} also appears in {filled[ours]}")
                shape = tuple(f.get_slice(hf_name).get_shape())
                want = tuple(expected[ours].shape)
                if shape != want:
                    raise CheckpointError(f"{file.name}: tensor {hf_name} has shape {list(shape)}, "
                                          f"the config says {list(want)}")
                kind = f.get_slice(hf_name).get_dtype()  # "BF16", "F32", ... as the file says
                stored[kind] = stored.get(kind, 0) + 1
                if str(device) == "meta":  # a structural check: shapes and names only, no data read
                    t = torch.empty(shape, dtype=dtype or torch.float32, device="meta")
                else:
                    t = f.get_tensor(hf_name).to(device=device, dtype=dtype)
                set_parameter(model, ours, t)
                filled[ours] = file.name
    missing = [name for name in expected if name not in filled]
    if missing:
        raise CheckpointError(f"{files[0].parent}: {len(missing)} parameter(s) not in any file, "
                              f"first: {missing[0]}")
    return {"stored_dtypes": stored, "n_tensors": len(filled)}


def load(path, dtype=torch.float32, device="cpu", progress=None) -> Transformer:
    """A ready minivtp Transformer from a Hugging Face LLaMA checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    hf = read_config(path)
    files = shard_files(path)
    cfg = Config.from_hf(hf)
    index = None
    if (path / "model.safetensors.index.json").is_file():
        index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python weights.py CHECKPOINT_DIR", file=sys.stderr)
        return 2
    try:
        # A structural check on the meta device: every name, shape and file, without reading 13 GB of data.
        model = load(argv[0], device="meta")
    except ValueError as e:  # CheckpointError is a ValueError, and so is a config we cannot build
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(describe(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
