"""What the command-line tools share: devices and dtypes checked in one line each, argparse errors as one line,
the options `answer`, `eval` and `explore` take (declared once here), the method names, and the method a command
line asks for (a generate.Method, or a rival of minivtp/rivals/)."""

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# --method: LLM-VTP, the rivals (minivtp/rivals/), and LLM-VTP's two baselines (vtp.py)
METHODS = ("llm-vtp", "fastv", "prumerge+", "look-m", "random", "complement")


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


def method_of(args):
    """The --method and its flags as what generate takes: a generate.Method (LLM-VTP, random, complement), a rival
    of minivtp/rivals/ with its own options, or None when nothing is pruned (alpha 1)."""
    from minivtp.generate import Method
    from minivtp.rivals import FastV, LookM, PruMergePlus
    from minivtp.vtp import check_alpha
    check_alpha(args.alpha)  # 1.5 is a mistake, not "keep everything"
    variant = getattr(args, "variant", "paper")
    if args.method in ("fastv", "look-m", "prumerge+") and variant != "paper":
        raise ValueError(f"variant and its switches (rope, causal, question_pool, count) are LLM-VTP's; "
                         f"method={args.method!r} has its own rule")
    if args.method == "prumerge+":
        return PruMergePlus()
    if args.method == "look-m":
        return LookM(recent=args.recent, important=args.important, merge=args.merge)
    if args.alpha == 1:
        return None
    if args.method == "fastv":
        return FastV(alpha=args.alpha, layer=args.layer)
    return Method(args.method, alpha=args.alpha, layer=args.layer, head_pool=args.head_pool, variant=variant)


def add_model_options(p, decode_help: str):
    """The options every command that loads a video LLM takes (answer, eval, explore): declared once."""
    p.add_argument("--weights", required=True, help="checkpoint directory (config.json, safetensors, tokenizer.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32", choices=sorted(DTYPES))
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale for unmerged adapters when the "
                   "directory has no adapter_config.json (PLLaVA's released weights: 4)")
    p.add_argument("--decode", default=None, choices=("eager", "plain", "tuned", "triton"), help=decode_help)
    p.add_argument("--eager", action="store_true", help="the readable path, step by step in Python (--decode eager)")
    p.add_argument("--no-compile", action="store_true", help="on CUDA, the CUDA graph of model.py's own decode step, "
                   "nothing compiled (--decode plain)")


def add_method_options(p, alpha: float):
    """How the video tokens are chosen (answer and eval): the method's name and every method's options."""
    p.add_argument("--method", default="llm-vtp", choices=METHODS,
                   help="how tokens are chosen: LLM-VTP (default); FastV (--alpha of the whole video, --layer K); "
                        "PruMerge+ (in the vision tower, adaptive); Look-M (--recent, --important); baselines")
    p.add_argument("--alpha", type=float, default=alpha, help="fraction of each frame's tokens kept, (0, 1]; "
                   "1 = no pruning")
    p.add_argument("--layer", type=int, default=10, help="M, the layer that prunes, 1..L")
    p.add_argument("--head-pool", default="max", choices=("max", "mean", "min"))
    p.add_argument("--variant", default="paper", choices=("paper", "released"), help=VARIANT_HELP)
    p.add_argument("--recent", type=float, default=0.05, help="Look-M: fraction of rows kept as the most recent")
    p.add_argument("--important", type=float, default=0.05, help="Look-M: fraction kept by attention, text first")
    p.add_argument("--merge", default="average", choices=("average", "pivotal", "none"), help="Look-M's merge")


def decode_step(args, default: str):
    """--decode, or its shorthands: --eager, --no-compile (plain); else `default` on CUDA, the readable path
    elsewhere (fast.decoder_for takes the name)."""
    if args.eager:
        return "eager"
    if args.no_compile:
        return "plain"
    if args.decode:
        return args.decode
    return default if torch.device(args.device).type == "cuda" else None


VARIANT_HELP = ("LLM-VTP as the paper writes it (default) or as the authors' released code runs it: scores from q, k "
                "before RoPE, no causal mask, the max over question rows, int(alpha*Nv) kept a frame, which may be 0 "
                "(tutorial/12_released_code.md)")


def zero_count_note(method, video):
    """The line a user gets when the released count keeps no token of a frame (int(Nv*alpha) = 0), else None.

    Not an error: the released code does it without a word (its torch.topk with k=0), and --variant released
    means running that rule, so the run goes on and says so."""
    from minivtp.vtp import VARIANTS, n_keep
    if not hasattr(method, "variant") or video is None:  # not LLM-VTP's rule (nothing pruned, or a rival)
        return None
    count = method.count or VARIANTS[method.variant]["count"]
    Nv = video.tokens_per_frame if method.ranking == "frame" else video.frames * video.tokens_per_frame
    if count != "floor" or n_keep(method.alpha, Nv, "floor") > 0:
        return None
    where = "of each frame" if method.ranking == "frame" else "of the video"
    return (f"the released count keeps int({Nv} * {method.alpha}) = 0 tokens {where}: no video token goes on past "
            f"layer {method.layer} and the KV cache holds none of them, as in the authors' code (the paper's "
            f"ceil keeps {n_keep(method.alpha, Nv)})")
