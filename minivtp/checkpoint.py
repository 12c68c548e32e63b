"""What every loader shares, below weights.py and the hosts: opening a Hugging Face checkpoint directory
(safetensors only), renaming its tensors to ours by rules, and filling a model built on the meta device, strictly.

    path, hf, files, index = open_checkpoint("pllava-7b")     # config.json, the shards in load order, the index
    model = build_on_meta(path, lambda: MyModel(cfg), "the model")
    info = load_into(model, files, rename, torch.bfloat16, "cuda", index)   # every tensor used, every parameter filled

The directory is what `save_pretrained` writes: `config.json` plus either `model.safetensors` or shards listed in
`model.safetensors.index.json`. The loader is loud on purpose: every tensor in the files must map to a parameter,
every parameter must be filled, every shape must match, and each error names the tensor and the file. Pickle
checkpoints (`pytorch_model.bin`) are refused: unpickling runs code from the file. The model is built on the meta
device (no memory), then filled shard by shard, tensor by tensor, so a 7B checkpoint never exists twice in memory.
"""

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from minivtp.model import Config


class CheckpointError(ValueError):
    pass


PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "consolidated.00.pth")


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face checkpoint directory?)")
    return read_json(f)


def read_json(f: Path) -> dict:
    """A JSON object from a file, or a CheckpointError naming the file (not UTF-8, not JSON, not an object)."""
    try:
        d = json.loads(f.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{f}: holds a JSON {type(d).__name__}, not an object")
    return d


def preprocessor_config(path: Path):
    """The normalisation the processor saved beside the weights, as a dict (the video processor's first: that is
    what videos go through), or None where the directory has neither file."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            return read_json(path / name)
    return None


def open_checkpoint(path):
    """(directory, parsed config.json, safetensors files in load order, the index's weight_map or None).
    Refuses what is not a directory, and pickle-only directories."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    hf = read_config(path)
    files, weight_map = shard_files(path)
    return path, hf, files, weight_map


def shard_files(path: Path):
    """(the safetensors files of a checkpoint in load order, the index's weight_map or None)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        files = sorted(set(weight_map.values()))
        for name in files:
            if not (path / name).is_file():
                raise CheckpointError(f"{index}: lists shard {name}, which is not in {path}")
        return [path / name for name in files], weight_map
    single = path / "model.safetensors"
    if single.is_file():
        return [single], None
    pickles = [n for n in PICKLE_NAMES if (path / n).exists()] + [p.name for p in path.glob("*.bin")]
    if pickles:
        raise CheckpointError(
            f"{path}: only pickle checkpoints ({', '.join(sorted(set(pickles)))}); minivtp loads safetensors only, "
            f"because unpickling can run code. {pickle_advice(path)}")
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def pickle_advice(path: Path) -> str:
    """How to convert a pickle directory once, as a shell command for the class its config.json names, or a
    plain sentence where transformers has no such class."""
    import shlex
    try:
        archs = read_config(path).get("architectures") or []
    except CheckpointError:
        archs = []
    arch = archs[0] if isinstance(archs, list) and archs else "AutoModelForCausalLM"
    try:
        import transformers
        known = hasattr(transformers, arch)
    except ImportError:
        known = True  # cannot tell here; the command says what it needs
    new = path.with_name(path.name + "-safetensors")
    if not known:
        return (f"transformers has no {arch}, so no from_pretrained command converts it: read each .bin with "
                "torch.load(f, weights_only=True), write the tensors with safetensors.torch.save_file, and copy "
                "config.json and the tokenizer files beside them (docs/checkpoints.md does it for ST-LLM)")
    code = (f"from transformers import {arch} as M; "
            f"M.from_pretrained({json.dumps(str(path))}).save_pretrained({json.dumps(str(new))}, safe_serialization=True)")
    return (f"Convert it once (needs pip install transformers): python -c {shlex.quote(code)} && "
            f"cp {shlex.quote(str(path))}/tokenizer* {shlex.quote(str(new))}/")


def open_shard(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type for truncated / corrupt files
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


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
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.", r"layers.\1.attn.\2_norm."),  # Qwen3's per-head norms
    (r"model\.norm\.", "norm."),
    (r"lm_head\.", "output."),
]


# Old conversions stored RoPE's inverse frequencies as tensors. They are a function of the config, which
# is where I take them from; these keys are recognised and deliberately not loaded.
DERIVED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def apply_rules(name: str, rules):
    """`name` renamed by the first of `rules`, (pattern, replacement) pairs, whose pattern matches at its start;
    None if none does. Every host's names go through it."""
    for pattern, repl in rules:
        ours, n = re.subn("^" + pattern, repl, name)
        if n:
            return ours
    return None


def build_on_meta(path, make, what: str):
    """make() on the meta device (no memory; load_staged fills it), or one CheckpointError naming the config.json
    that could not build `what`."""
    try:
        with torch.device("meta"):
            return make()
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}/config.json: cannot build {what} ({e})") from None


def no_lora(path, hf: dict, lora_alpha):
    """--lora-alpha given for a checkpoint whose loader merges no adapters: one error, not a silent no-op."""
    if lora_alpha is not None:
        raise CheckpointError(f"{path}: --lora-alpha is for PLLaVA's adapters; a {hf.get('model_type')} checkpoint "
                              "has none")


def hf_to_ours(name: str):
    return apply_rules(name, HF_TO_OURS)


def hf_names(cfg: Config) -> list:
    """Every tensor name a Hugging Face LlamaForCausalLM (or Qwen2ForCausalLM) with this config saves."""
    names = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if cfg.tie_embeddings else ["lm_head.weight"])
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            bias = cfg.attention_bias or (cfg.qkv_bias and proj != "o")
            names += [p + f"self_attn.{proj}_proj.weight"] + ([p + f"self_attn.{proj}_proj.bias"] if bias else [])
        for proj in ("gate", "up", "down"):
            names += [p + f"mlp.{proj}_proj.weight"] + ([p + f"mlp.{proj}_proj.bias"] if cfg.mlp_bias else [])
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    return names


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


def load_staged(model: nn.Module, files: list, rename, dtype, device, index=None, progress=None, stages=()) -> dict:
    """`load_into`, for checkpoints that store some parameters in another shape or in pieces (the Q-Former hosts:
    transformers' (1, Nq, Cq) queries, LAVIS's q_bias and v_bias beside a bias-free qkv).

    Each stage is (our names, {stored name: stored shape}, make): while loading, the stored names are
    parameters of `model` in place of ours, so `load_into` checks their shapes and that every one is filled; then
    make({stored name: tensor}) returns the tensors for our names, in order."""
    for ours, stored, _ in stages:
        for name in ours:
            module, _, leaf = name.rpartition(".")
            delattr(model.get_submodule(module), leaf)
        for name, shape in stored.items():
            set_parameter(model, name, torch.empty(shape, device="meta"))
    info = load_into(model, files, rename, dtype, device, index, progress)
    for ours, stored, make in stages:
        got = {}
        for name in stored:
            module, _, leaf = name.rpartition(".")
            got[name] = model.get_parameter(name).data
            delattr(model.get_submodule(module), leaf)
        for name, t in zip(ours, make(got)):
            set_parameter(model, name, t)
    return info
