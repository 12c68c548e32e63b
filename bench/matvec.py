"""One decode row through each of Vicuna-7B's weight shapes, on one GPU: how fast each way of computing it is.

    python bench/matvec.py          # about 40 s on an H100; prints one line per way

Ways: cuBLASLt (PyTorch's default), cuBLAS, torch.mv, F.linear compiled in max-autotune mode (Triton kernels
timed against cuBLAS), and the product written as a multiply-and-sum that Inductor turns into one reduction.
Each timed as 8 calls in a CUDA graph (as a decode step runs them), microseconds per call and TB/s of weights
read; "err" is the largest difference from F.linear relative to its largest value (bf16 rounding).
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu import cuda_ms  # noqa: E402  (bench/gpu.py)
from minivtp.generate import AUTOTUNE, capture  # noqa: E402

SHAPES = {"qkv": (4096, 12288), "o": (4096, 4096), "gate": (4096, 11008), "gate+up": (4096, 22016),
          "down": (11008, 4096), "head": (4096, 32000)}  # name: (in, out)


@torch.no_grad()
def bench(tag, weights, lin=F.linear, rows=1):
    line = []
    for name, (k, n) in SHAPES.items():
        a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        w = weights[name]
        ref = F.linear(a, w).float()
        err = ((lin(a, w).float() - ref).abs().max() / ref.abs().max()).item()
        torch.cuda.synchronize()
        graph, _ = capture(lambda: [lin(a, w) for _ in range(8)])
        ms = cuda_ms(graph.replay, warmup=3, reps=20) / 8
        line.append(f"{name} {ms * 1e3:.1f} us {(n * k * 2) / (ms / 1e3) / 1e12:.2f} TB/s (err {err:.0e})")
    print(f"{tag} rows {rows}: " + ", ".join(line), flush=True)


def main():
    assert torch.cuda.is_available(), "bench/matvec.py needs a CUDA GPU"
    weights = {k: torch.randn(n, kk, device="cuda", dtype=torch.bfloat16) for k, (kk, n) in SHAPES.items()}
    bench("cublaslt (default)", weights)
    torch.backends.cuda.preferred_blas_library("cublas")
    bench("cublas", weights)
    torch.backends.cuda.preferred_blas_library("cublaslt")
    bench("torch.mv", weights, lambda a, w: torch.mv(w, a[0])[None])
    import torch._inductor.config as inductor
    inductor.max_autotune_gemm_backends = "TRITON,ATEN"  # Triton's kernels and cuBLAS, timed against each other
    t = time.perf_counter()
    bench("compiled max-autotune", weights, torch.compile(F.linear, mode=AUTOTUNE, dynamic=False))
    print(f"(compile and autotune {time.perf_counter() - t:.0f} s)", flush=True)
    summed = torch.compile(lambda a, w: (a.float()[:, None, :] * w.float()[None]).sum(-1).to(a.dtype), dynamic=False)
    bench("compiled multiply-and-sum", weights, summed)


if __name__ == "__main__":
    main()
