"""What the command-line tools share: devices and dtypes checked in one line each, argparse errors as one line,
and loading a checkpoint with its tokenizer (`python -m minivtp answer`, `eval`, `minivtp.lab.explore`)."""

import argparse
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_device(name: str):
    """One line for every device string that will not run: unknown names, a GPU that is not there."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name torch knows (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}, but torch sees no CUDA GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered 0..{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}, but torch sees no Apple GPU")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r}: minivtp runs on cpu, cuda or mps")


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as one `error:` line and exit code 2, like every other problem."""

    def error(self, message):
        print(f"error: {message} ({self.prog} --help lists the arguments)",
              file=sys.stderr)
        sys.exit(2)


def load_checkpoint(args):
    """(VideoLLM, Tokenizer, seconds) from --weights, with a progress line per shard; one error if they disagree."""
    import weights
    from minivtp.tokenizer import Tokenizer

    check_device(args.device)
    check_prumerge_fits(args)
    t = time.perf_counter()

    def progress(i, n, file):
        print(f"loading shard {i + 1}/{n}: {file.name}  ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)

    model = weights.load_video_llm(args.weights, dtype=DTYPES[args.dtype], device=args.device, progress=progress,
                                   lora_alpha=args.lora_alpha)
    tok = Tokenizer.from_file(args.weights)
    if is_qformer_host(model):  # they splice their placeholder id themselves: the tokenizer need not know it
        return model, tok, time.perf_counter() - t
    name = model.placeholder
    if model.image_token >= 0:  # a vocabulary id (LLaVA-NeXT's -200 is spliced in by encode_prompt instead)
        if tok.added.get(name) != model.image_token:
            raise ValueError(f"{args.weights}: the tokenizer's {name} is {tok.added.get(name)}, the model's video "
                             f"token is {model.image_token}")
    return model, tok, time.perf_counter() - t


def encode_prompt(tok, text: str, model) -> list:
    """Token ids of a prompt with ONE video placeholder. A tokenizer that knows the placeholder encodes it; one that
    does not need to: LLaVA-NeXT's id is -200, outside any vocabulary, and its tokenizer_image_token encodes the
    text on each side and puts the id between. So do I."""
    if model.image_token >= 0:
        return tok.encode(text)
    before, sep, after = text.partition(model.placeholder)
    if not sep:
        raise ValueError(f"the prompt holds no {model.placeholder}")
    return tok.encode(before) + [model.image_token] + tok.encode(after, bos=False)


def is_qformer_host(model) -> bool:
    return hasattr(model, "qformer")


def check_prumerge_fits(args):
    """--method prumerge+ on a Q-Former host is one error line before a 7B checkpoint is read."""
    import weights
    from pathlib import Path
    if getattr(args, "method", None) != "prumerge+" or not Path(args.weights).is_dir():
        return
    if weights.read_config(Path(args.weights)).get("model_type") in weights.QFORMER_HOSTS:
        from minivtp.hosts.instructblip import PRUMERGE_ERROR
        raise ValueError(PRUMERGE_ERROR)


def qformer_inputs(model, tok, question: str, device, mvbench: bool = False):
    """A Q-Former host's prompt (minivtp/hosts/): (ids with one placeholder, {"qformer_ids": the question's
    BERT ids}), as `model.prompt(ids, pixels, **extra)` takes them."""
    ids = torch.tensor(model.prompt_ids(tok, question, mvbench), device=device)
    return ids, dict(qformer_ids=model.qformer_ids(model.qformer_text(question, mvbench), device))


def method_of(args):
    """The --method and its flags as a generate.Method; None when nothing is pruned inside the LLM."""
    from minivtp.generate import Method
    from minivtp.vtp import check_alpha
    check_alpha(args.alpha)  # 1.5 is a mistake, not "keep everything"
    if args.method == "prumerge+" or (args.alpha == 1 and args.method != "look-m"):
        return None
    return Method(args.method, alpha=args.alpha, layer=None if args.method == "look-m" else args.layer,
                  head_pool=args.head_pool, recent=args.recent, important=args.important,
                  merge=args.merge, variant=getattr(args, "variant", "paper"))


VARIANT_HELP = ("LLM-VTP as the paper writes it (default) or as the authors' released code runs it: scores from q, k "
                "before RoPE, no causal mask, the max over question rows, int(alpha*Nv) kept a frame, which may be 0 "
                "(tutorial/12_released_code.md)")


def zero_count_note(method, video):
    """The line a user gets when the released count keeps no token of a frame (int(Nv*alpha) = 0), else None.

    Not an error: the released code does it without a word (its torch.topk with k=0), and --variant released
    means running that rule, so the run goes on and says so."""
    from minivtp.vtp import VARIANTS, n_keep
    if method is None or video is None or method.name in ("fastv", "look-m"):
        return None
    count = method.count or VARIANTS[method.variant]["count"]
    Nv = video.tokens_per_frame if method.ranking == "frame" else video.frames * video.tokens_per_frame
    if count != "floor" or n_keep(method.alpha, Nv, "floor") > 0:
        return None
    where = "of each frame" if method.ranking == "frame" else "of the video"
    return (f"the released count keeps int({Nv} * {method.alpha}) = 0 tokens {where}: no video token goes on past "
            f"layer {method.layer} and the KV cache holds none of them, as in the authors' code (the paper's "
            f"ceil keeps {n_keep(method.alpha, Nv)})")
