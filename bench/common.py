"""What every script in bench/ shares: the shapes, the settings, random weights, the timers, the profiler's kernel
table, a PLLaVA-7B-shaped checkpoint on disk, and the JSON every script writes.

Run the scripts as modules from the repository root, so that `bench` and `minivtp` import with no path tricks:

    python -m bench.e2e --out OUT          # per question, against transformers; growth in frames
    python -m bench.floors --out OUT       # decode and pruned prefill against their floors
    python -m bench.oneshot --out OUT      # the whole `python -m minivtp answer` command, cold and warm
    python -m bench.frames --out OUT       # reading 16 frames from long videos (CPU)
    python -m bench.floors --out OUT --parts attention,gemm   # one decode row's attention by kernel; matmuls by rows

Each takes `--tiny`: the same code on a small config, on the CPU, in seconds (tests/test_bench.py runs them so).
Parts that need CUDA (graph capture, the profiler's CUDA kernels, the device copy) are skipped on a CPU with one
printed line that says so. Every JSON file holds the machine's name (`device`) and the command that wrote it.

The shape is PLLaVA-7B's: Vicuna-7B (C 4,096, L 32, F 11,008, vocabulary 32,064) reading a prompt of 35 rows,
16 frames x 144 pooled video rows, 60 question rows (2,399 rows), answering 5 tokens (multiple choice) or 72
(open-ended). Weights are random: speed does not depend on their values.
"""

import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minivtp.generate import Method, decode_one_token, prefill
from minivtp.model import Config, Transformer
from minivtp.hosts.llava import VideoLLM, VisionConfig
from minivtp.vtp import VideoSpan
from minivtp.rivals import FastV, LookM

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = (5, 72)  # a multiple-choice letter and a few words; an open-ended answer (Tab. 3)
QUESTION = "What is the person doing after opening the window?"

# ----------------------------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class Shape:
    text: Config
    vision: VisionConfig
    prefix: int = 35  # system prompt rows before the video
    frames: int = 16  # T after PLLaVA's pooling
    grid: int = 12  # pooled patches per side: Nv = grid^2 = 144
    question: int = 60  # rows after the video (question, options, "ASSISTANT:")
    image_token: int = 32000  # <image> in PLLaVA's vocabulary
    growth: tuple = (8, 16, 32, 64, 128)  # frames for bench/e2e.py's growth; 128 x 144 = 18,432 video rows
    lora_rank: int = 128  # PLLaVA trains q_proj / v_proj with LoRA, r 128
    frame_size: tuple = (360, 640)  # the frames oneshot's video holds (H, W)
    new_tokens: tuple = NEW_TOKENS
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    tiny: bool = False

    @property
    def nv(self) -> int:  # video rows per frame
        return self.grid * self.grid

    @property
    def rows(self) -> int:  # N, the prompt's rows
        return self.prefix + self.frames * self.nv + self.question

    @property
    def video(self) -> VideoSpan:
        return VideoSpan(self.prefix, self.frames, self.nv)

    @property
    def pooling(self) -> tuple:
        return (self.frames, self.grid, self.grid)


# Vicuna-7B as PLLaVA-7B holds it; positions for the growth's 128 frames (35 + 18,432 + 60 + 72 new tokens)
PLLAVA_7B = Config(vocab_size=32064, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008,
                   max_seq_len=20480)
CLIP_L336 = VisionConfig()  # CLIP ViT-L/14 at 336 px, features of layer -2
# tiny: 12 layers so that M = 10 exists; 28 px images of 2 x 2 patches, pooled to 2 x 2 per frame
TINY_TEXT = Config(vocab_size=448, dim=64, n_layers=12, n_heads=4, n_kv_heads=4, hidden_dim=128, max_seq_len=1024)
TINY_VISION = VisionConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=64, image_size=28, patch_size=14)


def shape(tiny: bool = False) -> Shape:
    """The full shape on CUDA, or with `tiny` a small one (on CUDA if there is one, else the CPU, in float32)."""
    if tiny:
        cuda = torch.cuda.is_available()
        return Shape(TINY_TEXT, TINY_VISION, prefix=5, frames=4, grid=2, question=6, image_token=384,
                     growth=(2, 4, 8), lora_rank=4, frame_size=(36, 64), new_tokens=(2, 4),
                     device="cuda" if cuda else "cpu",
                     dtype=torch.bfloat16 if cuda else torch.float32, tiny=True)
    if not torch.cuda.is_available():
        sys.exit(f"{Path(sys.argv[0]).name}: the full shape needs a CUDA GPU (--tiny runs a small one on the CPU)")
    return Shape(PLLAVA_7B, CLIP_L336)


def cuda(s: Shape) -> bool:
    return torch.device(s.device).type == "cuda"


def skip(part: str, why: str):
    """One printed line for a part this machine does not run."""
    print(f"skipped {part}: {why}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Settings, as generate.Method values

# bench/e2e.py's per-question settings, named as they have been since its first run: name -> (Method, PruMerge+)
QUESTION_SETTINGS = {
    "unpruned": (None, False),
    "llm-vtp a0.1 M10": (Method(alpha=0.1, layer=10), False),
    "llm-vtp a0.2 M5": (Method(alpha=0.2, layer=5), False),
    "fastv a0.1 K10": (FastV(alpha=0.1, layer=10), False),
    "look-m 0.05+0.05": (LookM(recent=0.05, important=0.05), False),
    "prumerge+": (None, True),  # pruned in the vision tower: nothing for the LLM to prune
}
# the paper's four LLM-VTP settings for PLLaVA (alpha 0.2 / 0.1, M 5 / 10) and the unpruned prefill they are
# measured against (bench/floors.py, named as bench/fast_path.py named them)
PAPER_SETTINGS = {
    "none": None,
    "a0.2 M5": Method(alpha=0.2, layer=5),
    "a0.2 M10": Method(alpha=0.2, layer=10),
    "a0.1 M5": Method(alpha=0.1, layer=5),
    "a0.1 M10": Method(alpha=0.1, layer=10),
}
LLM_VTP = QUESTION_SETTINGS["llm-vtp a0.1 M10"][0]  # the setting growth and oneshot compare with unpruned


# ----------------------------------------------------------------------------------------------------------------
# Random weights, made one way


@torch.no_grad()
def init_(t, name: str, g, std: float = 0.02):
    """The one rule for random weights, by the tensor's name: biases 0, norms' gains 1 (input_layernorm,
    pre_layrnorm (sic), layer_norm1, attn_norm ...), LoRA's B small (so a merge changes the weights, as a trained
    adapter does), the rest N(0, std^2). In place, on the tensor's own device."""
    if name.endswith("bias"):
        return t.zero_()
    if "norm" in name:
        return t.fill_(1.0)
    return t.normal_(0, std / 10 if "lora_B" in name else std, generator=g)


@torch.no_grad()
def randomize(module, seed: int = 0, std: float = 0.02):
    """Every parameter of a module drawn by init_. It fills minivtp's models and transformers' alike (bench/e2e.py
    compares them on equal terms), and write_checkpoint's tensors follow the same rule."""
    g = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        init_(p, name, g, std)
    return module


def build(make, s: Shape, dtype=None):
    """make() built on the meta device, given storage of `dtype` on s.device (no host copy, no float32 detour),
    then randomized."""
    with torch.device("meta"):
        module = make()
    return randomize(module.to(dtype or s.dtype).to_empty(device=s.device)).eval()


def random_llm(s: Shape, dtype=None) -> Transformer:
    return build(lambda: Transformer(s.text), s, dtype)


def random_video_llm(s: Shape) -> VideoLLM:
    return build(lambda: VideoLLM(s.text, s.vision, arrangement="pllava", pooling_shape=s.pooling,
                                  image_token=s.image_token, frames=s.frames), s)


def prompt_ids(s: Shape, seed: int = 0) -> torch.Tensor:
    """prefix + one <image> + question token ids (drawn below <image>), on s.device."""
    ids = torch.randint(3, s.image_token, (s.prefix + 1 + s.question,), generator=torch.Generator().manual_seed(seed))
    ids[s.prefix] = s.image_token
    return ids.to(s.device)


def random_pixels(s: Shape, frames=None, seed: int = 0) -> torch.Tensor:  # (T, 3, S, S), CLIP-normalised scale
    S = s.vision.image_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames or s.frames, 3, S, S, generator=g).to(s.device)


def random_embeds(s: Shape, rows: int, seed: int = 0) -> torch.Tensor:  # (1, rows, C)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, rows, s.text.dim, generator=g) * 0.02).to(s.device, s.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Timers


def clock(device) -> float:
    """Seconds, after the GPU has finished what it was given."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


class Timer:
    """Milliseconds between start() and stop(): CUDA events on a GPU (they time the kernels, not the host's
    wait), the wall clock elsewhere."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def start(self):
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.b.record()
            torch.cuda.synchronize()
            return self.a.elapsed_time(self.b)
        return (time.perf_counter() - self.t) * 1e3


def median_ms(fn, device, warmup: int = 2, reps: int = 5) -> float:
    """Median milliseconds of fn() over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    timer, times = Timer(device), []
    for _ in range(reps):
        timer.start()
        fn()
        times.append(timer.stop())
    return statistics.median(times)


@torch.no_grad()
def prefill_ms(model, embeds, video, method, decoder=None, warmup: int = 2, reps: int = 5, new_tokens: int = 72):
    """(median ms of `prefill`, its logits (V,)): the paper's method, layers M+1..L through `decoder` (default
    the readable loop). method None: unpruned. Two sets of caches, made once and used in turn (a fresh set each
    run would time a 1.3 GB memset at 7B); each run gets a copy of the list, as a graph tail puts its own caches
    in place of layers M+1..L."""
    N = embeds.shape[1]
    pools = [model.new_caches(1, N + new_tokens) for _ in range(2)]
    kw = dict(video=None if method is None else video, method=method or Method(layer=1), decoder=decoder)
    i = [0]

    def run():
        i[0] += 1
        caches = pools[i[0] % 2]
        for c in caches:
            c.length = 0  # empty again: the next prefill appends from row 0
        return prefill(model, embeds, list(caches), **kw)[0]

    logits = run().clone()
    return median_ms(run, embeds.device, warmup, reps), logits


@torch.no_grad()
def decode_ms(model, caches, tokens, pos: int, decoder=None, profile: bool = False) -> dict:
    """The one decode-timing loop: the steps of `decoder` (default: generate.decode_one_token) fed `tokens` in turn (teacher
    forced, so every path computes the same rows) at positions pos, pos+1, ... after a prefill into `caches`, as
    many steps as a len(tokens)-token answer takes. The first step (where a graph is captured or a step compiled)
    is timed apart; the others give ms per token. profile: one more step under the profiler (its kernel table)."""
    n = len(tokens)
    if decoder is None:
        def step(token, p):
            return decode_one_token(model, token, p, caches)
    else:
        step = decoder.steps(caches, n)
    device = caches[0].k.device
    t = time.perf_counter()
    logits = [step(tokens[0], pos)]
    first_s = clock(device) - t
    timer = Timer(device)
    timer.start()
    for j in range(1, n - 1):
        logits.append(step(tokens[j], pos + j))
    ms = timer.stop() / max(1, n - 2)
    table = profile_kernels(lambda: step(tokens[n - 1], pos + n - 1), device) if profile else None
    return dict(ms=ms, first_step_s=first_s, logits=torch.stack(logits), profile=table)


# ----------------------------------------------------------------------------------------------------------------
# The profiler's kernel table


def cuda_kernels(prof) -> dict:
    """A torch.profiler run's CUDA kernels by full name (cut names would collide): {name: (ms, launches)}, the
    slowest first."""
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {e.key: (e.self_device_time_total / 1e3, e.count)
            for e in sorted(events, key=lambda e: -e.self_device_time_total)}


def profile_kernels(fn, device):
    """fn() under torch.profiler: {kernels, kernel_ms, launches}, or None on a CPU (nothing to launch)."""
    if torch.device(device).type != "cuda":
        skip("the kernel table", "no CUDA kernels on a CPU")
        return None
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kinds = cuda_kernels(prof)
    return dict(kernels={k: list(v) for k, v in kinds.items()}, kernel_ms=sum(v[0] for v in kinds.values()),
                launches=sum(v[1] for v in kinds.values()))


def print_kernels(table, top: int = 12):
    for name, (ms, n) in list(table["kernels"].items())[:top]:
        print(f"    {ms:7.3f} ms x{n:<5d} {name[:100]}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# JSON


def machine() -> dict:
    """What ran: the device's name (torch.cuda.get_device_name on a GPU), the software, the command."""
    res = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})",
               torch=torch.__version__, python=platform.python_version(), command=" ".join(sys.argv),
               date=time.strftime("%Y-%m-%d %H:%M:%S"))
    if torch.cuda.is_available():
        res["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 1e9
    try:
        import transformers
        res["transformers"] = transformers.__version__
    except ImportError:
        pass
    return res


def write_json(out: Path, name: str, res: dict) -> Path:
    """OUT/name, written whole each time (a script calls it after every part, so a killed run keeps what it had)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(path)
    return path


def timings(res, path=()):
    """{"a / b / c": number} for every timing in a result (keys median_s or ending in _ms); lists of growth rows
    keyed by their frames and setting, so that two runs line up."""
    out = {}
    if isinstance(res, list) and all(isinstance(r, dict) and "frames" in r for r in res):
        res = {f"{r['frames']} frames {r.get('setting', '')}".strip(): r for r in res}
    if isinstance(res, dict):
        for k, v in res.items():
            out.update(timings(v, path + (str(k),)))
    elif isinstance(res, (int, float)) and not isinstance(res, bool) and path and \
            (path[-1] == "median_s" or path[-1].endswith("_ms")):
        out[" / ".join(path)] = float(res)
    return out


def compare(old_path: Path, new_path: Path, tolerance: float = 0.05) -> int:
    """Every timing the two JSON files share, old beside new (a run of an earlier commit's script against this
    one's, in the same lease): the before/after table. Marks each figure that moved by more than `tolerance`."""
    old, new = json.loads(Path(old_path).read_text()), json.loads(Path(new_path).read_text())
    a, b = timings(old), timings(new)
    shared = [k for k in a if k in b]
    for name, res, path in (("old", old, old_path), ("new", new, new_path)):
        print(f"{name}: {path}: {res.get('device', '?')}, torch {res.get('torch', '?')}, {res.get('command', '')}")
    print("\n| figure | old | new | new / old |\n| --- | --- | --- | --- |")
    moved = 0
    for k in shared:
        ratio = b[k] / a[k] if a[k] else float("nan")
        flag = " **" if abs(ratio - 1) > tolerance else ""
        moved += bool(flag)
        print(f"| {k} | {a[k]:.4g} | {b[k]:.4g} | {ratio:.3f}{flag} |")
    print(f"\n{len(shared)} figures in both, {moved} moved by more than {tolerance:.0%} (marked **); "
          f"{len(a) - len(shared)} only in the old run, {len(b) - len(shared)} only in the new one")
    return 0


def parts(arg: str, known: tuple) -> list:
    """--parts a,b,c checked against the script's parts (all of them when not given)."""
    if not arg:
        return list(known)
    chosen = [p.strip() for p in arg.split(",") if p.strip()]
    bad = [p for p in chosen if p not in known]
    if bad:
        sys.exit(f"--parts: unknown {', '.join(bad)} (known: {', '.join(known)})")
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# A PLLaVA-shaped checkpoint on disk, in the layout the real one has


@dataclass
class Checkpoint:
    path: Path
    frames: Path  # a .safetensors video: (T, H, W, 3) uint8 under "frames"
    shards: list = field(default_factory=list)


def checkpoint_tensors(s: Shape):
    """(name, shape) of every tensor of a PLLaVA checkpoint: CLIP under vision_tower.vision_model, the projector,
    the language model PEFT-wrapped (language_model.base_model.model.*) with unmerged LoRA on q_proj and v_proj."""
    t, v, r = s.text, s.vision, s.lora_rank
    C, F, HD, KD = t.dim, t.hidden_dim, t.n_heads * t.head_dim, t.n_kv_heads * t.head_dim
    lm = "language_model.base_model.model."
    yield lm + "model.embed_tokens.weight", (t.vocab_size, C)
    yield lm + "model.norm.weight", (C,)
    yield lm + "lm_head.weight", (t.vocab_size, C)
    for i in range(t.n_layers):
        p = f"{lm}model.layers.{i}."
        for proj, shape_ in (("q", (HD, C)), ("k", (KD, C)), ("v", (KD, C)), ("o", (C, HD))):
            if proj in "qv":
                yield p + f"self_attn.{proj}_proj.base_layer.weight", shape_
                yield p + f"self_attn.{proj}_proj.lora_A.default.weight", (r, shape_[1])
                yield p + f"self_attn.{proj}_proj.lora_B.default.weight", (shape_[0], r)
            else:
                yield p + f"self_attn.{proj}_proj.weight", shape_
        yield p + "mlp.gate_proj.weight", (F, C)
        yield p + "mlp.up_proj.weight", (F, C)
        yield p + "mlp.down_proj.weight", (C, F)
        yield p + "input_layernorm.weight", (C,)
        yield p + "post_attention_layernorm.weight", (C,)
    Cv, Fv = v.dim, v.hidden_dim
    pre = "vision_tower.vision_model."
    yield pre + "embeddings.patch_embedding.weight", (Cv, 3, v.patch_size, v.patch_size)
    yield pre + "embeddings.class_embedding", (Cv,)
    yield pre + "embeddings.position_embedding.weight", (v.grid**2 + 1, Cv)
    for n in ("pre_layrnorm", "post_layernorm"):
        yield pre + f"{n}.weight", (Cv,)
        yield pre + f"{n}.bias", (Cv,)
    for i in range(v.n_layers):
        p = f"{pre}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield p + f"self_attn.{proj}.weight", (Cv, Cv)
            yield p + f"self_attn.{proj}.bias", (Cv,)
        for n in ("layer_norm1", "layer_norm2"):
            yield p + f"{n}.weight", (Cv,)
            yield p + f"{n}.bias", (Cv,)
        yield p + "mlp.fc1.weight", (Fv, Cv)
        yield p + "mlp.fc1.bias", (Fv,)
        yield p + "mlp.fc2.weight", (Cv, Fv)
        yield p + "mlp.fc2.bias", (Cv,)
    yield "multi_modal_projector.linear_1.weight", (C, Cv)
    yield "multi_modal_projector.linear_1.bias", (C,)
    yield "multi_modal_projector.linear_2.weight", (C, C)
    yield "multi_modal_projector.linear_2.bias", (C,)


LORA_ALPHA = 4  # PLLaVA's inference scripts pass --lora_alpha 4 (docs/checkpoints.md)


def write_checkpoint(d: Path, s: Shape, shard_bytes: float = 4e9, seed: int = 0) -> Checkpoint:
    """A random PLLaVA checkpoint in d, as the released one is laid out: safetensors shards of at most
    `shard_bytes` with an index, config.json, adapter_config.json (lora_alpha 4, r), a LLaMA-style tokenizer.json
    with <image>, and frames.safetensors (16 random frames). Tensors are drawn by init_ on s.device (fast at 7B),
    in s.dtype.
    Rewriting is skipped when d already holds a checkpoint written for the same shape (d/bench-shape.json)."""
    from safetensors.torch import save_file

    d = Path(d)
    frames = d / "frames.safetensors"
    stamp = dict(text=repr(s.text), vision=repr(s.vision), pooling=s.pooling, image_token=s.image_token,
                 lora_rank=s.lora_rank, dtype=str(s.dtype), frame_size=list(s.frame_size), frames=s.frames)
    marker = d / "bench-shape.json"
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(stamp)) and frames.is_file():
        return Checkpoint(d, frames, sorted(p.name for p in d.glob("model-*.safetensors")))
    d.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in d.glob("model-*.safetensors"):
        old.unlink()
    g = torch.Generator(s.device).manual_seed(seed)
    shards, shard, size = [], {}, 0
    for name, shape_ in checkpoint_tensors(s):
        t = init_(torch.empty(shape_, device=s.device, dtype=s.dtype), name, g)
        shard[name] = t.cpu()
        size += t.numel() * t.element_size()
        if size > shard_bytes:
            shards.append(shard)
            shard, size = {}, 0
    if shard:
        shards.append(shard)
    weight_map, names = {}, []
    for i, tensors in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, d / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in tensors})
        names.append(fname)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    t, v = s.text, s.vision
    config = dict(model_type="llava", architectures=["PllavaForConditionalGeneration"], image_token_index=s.image_token,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
                  pooling_shape=list(s.pooling), num_frames=s.frames, frame_shape=[v.grid, v.grid], use_pooling=True,
                  vision_config=dict(model_type="clip_vision_model", hidden_size=v.dim, intermediate_size=v.hidden_dim,
                                     num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads,
                                     image_size=v.image_size, patch_size=v.patch_size, hidden_act="quick_gelu",
                                     layer_norm_eps=v.eps),
                  text_config=dict(model_type="llama", vocab_size=t.vocab_size, hidden_size=t.dim,
                                   intermediate_size=t.hidden_dim, num_hidden_layers=t.n_layers,
                                   num_attention_heads=t.n_heads, num_key_value_heads=t.n_kv_heads,
                                   max_position_embeddings=4096, rms_norm_eps=t.norm_eps))
    (d / "config.json").write_text(json.dumps(config))
    (d / "adapter_config.json").write_text(json.dumps({"lora_alpha": LORA_ALPHA, "r": s.lora_rank}))
    write_tokenizer(d, s.image_token)
    H, W = s.frame_size
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (s.frames, H, W, 3), dtype=torch.uint8, generator=g)
    save_file({"frames": pixels}, frames)
    marker.write_text(json.dumps(stamp))
    return Checkpoint(d, frames, names)


def write_tokenizer(d: Path, image_token: int):
    """A LLaMA-style tokenizer.json (legacy layout: "\u2581" for spaces, byte fallback) padded with unused entries
    up to <image> = image_token. A handful of made-up merges: the vocabulary's content does not matter for speed."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "\u2581" + "".join(chr(c) for c in range(33, 127)):
        vocab.setdefault(ch, len(vocab))
    merges = [["\u2581", "t"], ["h", "e"], ["\u2581t", "he"], ["i", "n"], ["\u2581", "a"], ["o", "n"]]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) > image_token:
        raise ValueError(f"<image> = {image_token} would sit inside the {len(vocab)} base entries")
    for i in range(len(vocab), image_token):
        vocab[f"<unused{i}>"] = i

    def special(content, i):
        return dict(id=i, content=content, single_word=False, lstrip=False, rstrip=False, normalized=False,
                    special=True)

    tok = dict(version="1.0", truncation=None, padding=None,
               added_tokens=[special("<unk>", 0), special("<s>", 1), special("</s>", 2),
                             special("<image>", image_token)],
               normalizer=dict(type="Sequence", normalizers=[dict(type="Prepend", prepend="\u2581"),
                               dict(type="Replace", pattern=dict(String=" "), content="\u2581")]),
               pre_tokenizer=None,
               post_processor=dict(type="TemplateProcessing", single=[dict(SpecialToken=dict(id="<s>", type_id=0)),
                                   dict(Sequence=dict(id="A", type_id=0))], pair=[],
                                   special_tokens={"<s>": dict(id="<s>", ids=[1], tokens=["<s>"])}),
               decoder=None,
               model=dict(type="BPE", dropout=None, unk_token="<unk>", continuing_subword_prefix=None,
                          end_of_word_suffix=None, fuse_unk=True, byte_fallback=True, vocab=vocab, merges=merges))
    (d / "tokenizer.json").write_text(json.dumps(tok))


# ----------------------------------------------------------------------------------------------------------------
# transformers' side: the same pipeline with CLIPVisionModel and LlamaForCausalLM


def hf_configs(text: dict, vision: dict):
    """transformers' configs from a PLLaVA config.json's text_config and vision_config."""
    import transformers
    t = {k: v for k, v in text.items() if k != "model_type"}
    v = {k: val for k, val in vision.items() if k != "model_type"}
    return transformers.LlamaConfig(**t, attn_implementation="sdpa"), transformers.CLIPVisionConfig(**v)


def config_dicts(s: Shape):
    """text_config and vision_config as write_checkpoint writes them (for models made in memory)."""
    t, v = s.text, s.vision
    return (dict(vocab_size=t.vocab_size, hidden_size=t.dim, intermediate_size=t.hidden_dim,
                 num_hidden_layers=t.n_layers, num_attention_heads=t.n_heads, num_key_value_heads=t.n_kv_heads,
                 max_position_embeddings=4096, rms_norm_eps=t.norm_eps),
            dict(hidden_size=v.dim, intermediate_size=v.hidden_dim, num_hidden_layers=v.n_layers,
                 num_attention_heads=v.n_heads, image_size=v.image_size, patch_size=v.patch_size,
                 hidden_act="quick_gelu", layer_norm_eps=v.eps))


def hf_models(text: dict, vision: dict, device, dtype, init=True):
    """(CLIPVisionModel, LlamaForCausalLM, projector) built on `device` in `dtype`. init=False skips transformers'
    weight initialisation (the weights are about to be loaded), as from_pretrained does."""
    import contextlib

    import transformers
    try:  # transformers 5
        from transformers.initialization import no_init_weights
    except ImportError:
        try:  # transformers 4
            from transformers.modeling_utils import no_init_weights
        except ImportError:  # initialise, then overwrite: slower, the same weights in the end
            no_init_weights = contextlib.nullcontext
    llm_cfg, clip_cfg = hf_configs(text, vision)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if init:
                clip, llm = transformers.CLIPVisionModel(clip_cfg), transformers.LlamaForCausalLM(llm_cfg)
            else:
                with no_init_weights():
                    clip, llm = transformers.CLIPVisionModel(clip_cfg), transformers.LlamaForCausalLM(llm_cfg)
            # PLLaVA's projector: linear, GELU, linear (its own code; transformers has no PLLaVA class)
            projector = torch.nn.Sequential(torch.nn.Linear(clip_cfg.hidden_size, llm_cfg.hidden_size),
                                            torch.nn.GELU(),
                                            torch.nn.Linear(llm_cfg.hidden_size, llm_cfg.hidden_size))
    finally:
        torch.set_default_dtype(default)
    return clip.eval(), llm.eval(), projector.eval()


@torch.no_grad()
def hf_answer(clip, projector, llm, pixels, ids, n_new: int, pooling, image_token: int, **gen):
    """One question through transformers: CLIP (layer -2, no CLS), the projector, PLLaVA's pooling, the prompt
    spliced around the video, LlamaForCausalLM.generate (greedy, exactly n_new tokens). Returns the new ids."""
    from minivtp.hosts.llava import pllava_pool
    dtype = next(llm.parameters()).dtype
    grid = clip.config.image_size // clip.config.patch_size
    h = clip(pixels.to(dtype), output_hidden_states=True).hidden_states[-2][:, 1:]  # (T, P, Cv)
    video = pllava_pool(projector(h), grid, pooling)  # (T' h' w', C)
    i = (ids == image_token).nonzero().item()
    e = llm.get_input_embeddings()
    embeds = torch.cat([e(ids[:i]), video.to(dtype), e(ids[i + 1:])])[None]  # (1, N, C)
    out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], device=embeds.device,
                       dtype=torch.long), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                       pad_token_id=0, **gen)
    if out.shape[1] != n_new:
        raise RuntimeError(f"transformers generated {out.shape[1]} tokens, not {n_new}")
    return out[0]
