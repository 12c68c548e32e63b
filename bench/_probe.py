import sys, os, time
from pathlib import Path
import torch, torch.nn.functional as F
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
from gpu import cuda_ms
from minivtp.generate import capture
shapes = {"qkv": (4096, 12288), "o": (4096, 4096), "gate": (4096, 11008), "gate+up": (4096, 22016),
          "down": (11008, 4096), "head": (4096, 32000)}
ws = {k: torch.randn(n, kk, device="cuda", dtype=torch.bfloat16) for k, (kk, n) in shapes.items()}
def bench(tag, lin=F.linear, rows=1):
    line = []
    for name, (k, n) in shapes.items():
        a = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        w = ws[name]
        f = lambda: lin(a, w)
        ref = F.linear(a, w).float()
        err = ((f().float() - ref).abs().max() / ref.abs().max()).item()
        torch.cuda.synchronize()
        g, _ = capture(lambda: [f() for _ in range(8)])
        ms = cuda_ms(g.replay, warmup=3, reps=20) / 8
        line.append(f"{name} {ms*1e3:.1f} us {(n * k * 2) / (ms / 1e3) / 1e12:.2f} TB/s (err {err:.0e})")
    print(f"{tag} rows {rows}: " + ", ".join(line), flush=True)
bench("cublaslt default")
torch.backends.cuda.preferred_blas_library("cublas")
bench("cublas")
torch.backends.cuda.preferred_blas_library("cublaslt")
def mv(a, w):  # (1, K) x (N, K) -> (1, N) via matrix-vector
    return torch.mv(w, a[0])[None]
bench("torch.mv", mv)
t = time.time()
import torch._inductor.config as ic
ic.max_autotune_gemm_backends = "TRITON,ATEN"
cl = torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)
bench("compiled max-autotune", cl)
print("autotune took %.0f s" % (time.time() - t), flush=True)
cl2 = torch.compile(lambda a, w: (a.float()[:, None, :] * w.float()[None]).sum(-1).to(a.dtype), dynamic=False)
t = time.time()
bench("compiled mul+sum", cl2)
print("took %.0f s" % (time.time() - t), flush=True)
