"""Load Hugging Face checkpoints (safetensors only) into minivtp: LLaMA / Vicuna, and the video LLMs built on
them (LLaVA, PLLaVA, Tarsier).

    model = weights.load("path/to/vicuna-7b-v1.5", dtype=torch.bfloat16, device="cuda")
    model = weights.load_video_llm("path/to/pllava-7b", dtype=torch.bfloat16, device="cuda")
    python weights.py path/to/checkpoint        # what is in it, or one line saying what is wrong

Read top to bottom: opening a directory (config, shards, the index) -> how Hugging Face's tensor names map to
ours -> loading into a model built on the meta device -> merging LoRA adapters -> the command line. Other
model kinds (minivtp.toy) use the same pieces: `open_checkpoint`, `load_into` and a rename function.

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

from minivtp.hf_config import config_from_hf
from minivtp.model import Config, Transformer
from minivtp.vision import VideoLLM


# --------------------------------------------------------------------------------------------------------------
# Opening a checkpoint directory


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


# --------------------------------------------------------------------------------------------------------------
# Names: Hugging Face's -> ours


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


# LLaVA-family checkpoints: where each part's tensors live, in the layouts transformers has written over time.
#   language model   language_model.model.* + language_model.lm_head.*   (<= v4.51, and v5's save_pretrained)
#                    model.language_model.* + lm_head.*                    (v4.52 .. v4.5x)
#                    language_model.base_model.model.model.*               (a PEFT-wrapped model saved whole)
#   vision tower     vision_tower.vision_model.*  or  vision_tower.*  (each possibly under "model.")
#   projector        multi_modal_projector.linear_1 / linear_2
VISION_TO_OURS = [
    (r"embeddings\.patch_embedding\.", "patch."),
    (r"embeddings\.class_embedding$", "cls"),
    (r"embeddings\.position_embedding\.", "pos."),
    (r"pre_layrnorm\.", "pre_norm."),
    (r"post_layernorm\.", "post_norm."),
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.", r"layers.\1.wq."),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj\.", r"layers.\1.wk."),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj\.", r"layers.\1.wv."),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.wo."),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.", r"layers.\1.norm1."),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.", r"layers.\1.norm2."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.", r"layers.\1.fc1."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.", r"layers.\1.fc2."),
]
LORA = re.compile(r"(.*)\.lora_([AB])(?:\.default)?\.weight")


def llava_to_ours(name: str):
    """A LLaVA-family tensor name -> our VideoLLM parameter name; "" for derived buffers; None if unknown.
    LoRA tensors are not parameters and are handled by the caller."""
    name = re.sub(r"^model\.(?=vision_tower|multi_modal_projector|language_model)", "", name)
    if name.startswith("vision_tower."):
        rest = re.sub(r"^vision_tower\.(vision_model\.)?", "", name)
        if rest == "embeddings.position_ids":
            return ""  # arange(P + 1), a buffer in old checkpoints
        ours = apply_rules(rest, VISION_TO_OURS)
        return None if ours is None else "vision." + ours
    if name.startswith("multi_modal_projector."):
        return "projector." + name[len("multi_modal_projector."):]
    if name.startswith("language_model."):
        rest = name[len("language_model."):]
        rest = re.sub(r"^base_model\.model\.", "", rest)  # PEFT wrapper
        rest = re.sub(r"\.base_layer\.", ".", rest)  # PEFT keeps the frozen weight as X.base_layer.weight
        if re.match(r"(layers|embed_tokens|norm)\b", rest):
            rest = "model." + rest  # the v4.52 layout drops the inner "model."
        if DERIVED.fullmatch(rest):
            return ""
        ours = hf_to_ours(rest)
        return None if ours is None else "llm." + ours
    if name.startswith("lm_head."):  # the v4.52 layout keeps the head at the top level
        return "llm." + hf_to_ours(name)
    return None


# The Q-Former video LLMs (minivtp/hosts/), by config.json's model_type: their names and loaders live there.
QFORMER_HOSTS = ("instructblipvideo", "st_llm_hf", "videochat2")


# --------------------------------------------------------------------------------------------------------------
# Loading: fill a meta-device model, strictly


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


HOST_TYPES = ("llava_onevision", "llava_qwen")  # minivtp/hosts/llava_onevision.py: transformers' / LLaVA-NeXT's

# What load_video_llm builds, by config.json's model_type: the `architectures` each may name (None: the config
# names its own, as VideoChat2's hand-written one does). The one list of what is supported: a new host adds its
# row here and its branch in load_video_llm.
VIDEO_LLMS = {
    "llava": ("LlavaForConditionalGeneration", "PllavaForConditionalGeneration", "TarsierForConditionalGeneration"),
    "pllava": ("PllavaForConditionalGeneration", "LlavaForConditionalGeneration"),
    "tarsier": ("TarsierForConditionalGeneration", "LlavaForConditionalGeneration"),
    "llava_onevision": ("LlavaOnevisionForConditionalGeneration",),
    "llava_qwen": ("LlavaQwenForCausalLM",),
    "instructblipvideo": ("InstructBlipVideoForConditionalGeneration",),
    "st_llm_hf": ("STLLMForCausalLM",),
    "videochat2": None,
    "minivtp-toy": None,
}


def check_video_llm(path, hf: dict):
    """One CheckpointError, before any tensor is read, when config.json names a model that load_video_llm does not
    build: its architecture (or model_type) by name, and the list of what is supported."""
    kind = hf.get("model_type") or ("llava" if "vision_config" in hf else None)  # old LLaVA configs name none
    archs = hf.get("architectures") or []
    archs = [archs] if isinstance(archs, str) else archs
    if kind in VIDEO_LLMS and (VIDEO_LLMS[kind] is None or all(a in VIDEO_LLMS[kind] for a in archs)):
        return
    named = ", ".join(a for a in archs if kind not in VIDEO_LLMS or a not in VIDEO_LLMS[kind])
    what = f"architecture {named} (model_type {kind!r})" if named else f"model_type {kind!r}"
    known = "; ".join(f"{k}: {', '.join(v) if v else 'any'}" for k, v in VIDEO_LLMS.items())
    raise CheckpointError(f"{path}/config.json: {what} is not a video LLM minivtp knows; supported "
                          f"(model_type: architectures): {known}")


def load_video_llm(path, dtype=torch.float32, device="cpu", progress=None, lora_alpha=None):
    """A video LLM directory -> minivtp.vision.VideoLLM (LLaVA, PLLaVA, Tarsier), or a host of minivtp/hosts/
    (LLaVA-OneVision, LLaVA-Video: minivtp.hosts.llava_onevision.LlavaOnevision; InstructBLIP-Video, ST-LLM,
    VideoChat2: the Q-Former hosts, their loaders there). The toy loads with minivtp.toy.load.

    Unmerged LoRA adapters (X.lora_A / X.lora_B beside X's weight) are merged at load time:
    W = W + (lora_alpha / r) * B @ A. PLLaVA's released weights need this; its inference scripts pass
    --lora_alpha 4 with r = 128 (docs/checkpoints.md). lora_alpha comes from, in order: the argument,
    adapter_config.json in the directory, "lora_alpha" in config.json; with adapters and none of these, an error.
    """
    if Path(path).is_dir():  # what the config names, before the shards are listed or read
        check_video_llm(Path(path), read_config(Path(path)))
    path, hf, files, index = open_checkpoint(path)
    kind = hf.get("model_type")
    if kind in HOST_TYPES:  # LLaVA-OneVision / LLaVA-Video: their names and layouts live in their own file
        from minivtp.hosts import llava_onevision
        if lora_alpha is not None:
            raise CheckpointError(f"{path}: --lora-alpha is for PLLaVA's adapters; a {kind} checkpoint has none")
        return llava_onevision.load(path, hf, files, index, dtype, device, progress)
    if kind == "minivtp-toy":
        raise CheckpointError(f"{path}: this is minivtp's toy video LLM, which answers through python -m minivtp.demo "
                              "(from Python: minivtp.toy.load(path))")
    if kind == "instructblipvideo":  # the Q-Former hosts: their loaders live with them, in minivtp/hosts/
        from minivtp.hosts import instructblip
        return instructblip.load(path, dtype, device, progress)
    if kind == "st_llm_hf":
        from minivtp.hosts import stllm
        return stllm.load(path, dtype, device, progress)
    if kind == "videochat2":
        from minivtp.hosts import videochat2
        return videochat2.load(path, dtype, device, progress, lora_alpha)
    with torch.device("meta"):
        model = VideoLLM.from_hf(hf)
    lora = {}  # target parameter -> {"A": (file, name), "B": (file, name)}
    current = {}

    def rename(name):
        m = LORA.fullmatch(name)
        if m:
            target = llava_to_ours(m.group(1) + ".weight")
            if target is None:
                raise CheckpointError(f"{current['file'].name}: LoRA tensor {name} adapts nothing this model has")
            lora.setdefault(target, {})[m.group(2)] = (current["file"], name)
            return ""
        return llava_to_ours(name)

    def track(i, n, file):
        current["file"] = file
        if progress:
            progress(i, n, file)

    info = load_into(model, files, rename, dtype, device, index, progress=track)
    if model.llm.cfg.tie_embeddings:
        model.llm.output.weight = model.llm.embed.weight
    if lora:
        info["lora_merged"] = merge_lora(model, lora, path, hf, lora_alpha, device)
    model.load_info = dict(info, files=[f.name for f in files], path=str(path), config=hf)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# LoRA: adapters merged into the weights they adapt


def merge_lora(model, lora: dict, path: Path, hf: dict, lora_alpha, device) -> dict:
    alpha = lora_alpha
    adapter = path / "adapter_config.json"
    if alpha is None and adapter.is_file():
        alpha = json.loads(adapter.read_text()).get("lora_alpha")
    if alpha is None:
        alpha = hf.get("lora_alpha")
    if alpha is None:
        raise CheckpointError(f"{path}: holds unmerged LoRA adapters but no lora_alpha (give --lora-alpha on the "
                              "command line or lora_alpha=... to load_video_llm; PLLaVA's scripts use 4)")
    params = dict(model.named_parameters())
    ranks = set()
    for target, pair in sorted(lora.items()):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{path}: LoRA for {target} has only lora_{''.join(pair)}")
        if str(device) == "meta":
            continue
        (fa, na), (fb, nb) = pair["A"], pair["B"]
        A = open_shard(fa).get_tensor(na).float()  # (r, in)
        B = open_shard(fb).get_tensor(nb).float()  # (out, r)
        W = params[target]
        if A.shape[1] != W.shape[1] or B.shape[0] != W.shape[0] or A.shape[0] != B.shape[1]:
            raise CheckpointError(f"{fa.name}: LoRA {na} {list(A.shape)} / {nb} {list(B.shape)} do not fit "
                                  f"{target} {list(W.shape)}")
        r = A.shape[0]
        ranks.add(r)
        with torch.no_grad():  # subtle: merge in float32, then round once to the model's dtype
            W.copy_((W.float() + (alpha / r) * (B.to(W.device) @ A.to(W.device))).to(W.dtype))
    return dict(targets=len(lora), lora_alpha=alpha, ranks=sorted(ranks))


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
    elif hasattr(model, "vision"):
        v = model.vision.cfg
        tower = "SigLIP" if type(model).__module__.startswith("minivtp.hosts") else "CLIP ViT"
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
        video_kinds = ("llava", "pllava", "tarsier", "minivtp-toy", *HOST_TYPES) + QFORMER_HOSTS
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
