"""Where a pruned prefill's time goes, segment by segment, on the default fast path (a FastDecoder's graph tail).

    python bench/tail_segments.py          # Vicuna-7B shape, random bf16 weights; prints a table

The steps of `generate.prefill` for LLM-VTP, run one by one with CUDA events between them: layers 1..M, the
scores at layer M (Eq. 4), the choice (Eq. 5-6), dropping rows and compressing caches 1..M (Eq. 7-8), the graph
of layers M+1..L (with its copies into the question's caches), the head. Medians of 20 after warm-up.
"""

import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from profile_gpu import random_model  # noqa: E402
from minivtp import vtp  # noqa: E402
from minivtp.flops import VICUNA_7B  # noqa: E402
from minivtp.generate import FastDecoder, Method, choose, prefill  # noqa: E402

PREFIX, T, NV, NQ = 35, 16, 144, 60
N = PREFIX + T * NV + NQ


@torch.no_grad()
def segments(model, embeds, method, decoder, caches):
    video = vtp.VideoSpan(PREFIX, T, NV)
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(8)]
    marks[0].record()
    pos = torch.arange(N, device="cuda")
    cos, sin = model.rope(pos)
    x = embeds
    for l, (block, cache) in enumerate(zip(model.layers[: method.layer], caches), start=1):
        x_in = x
        x = block(x, cos, sin, pos, cache, slot=0)
    marks[1].record()
    a_v = vtp.scores_fast(block, x_in, cos, sin, pos, cache, video, method.head_pool)
    marks[2].record()
    S = choose(method, a_v, video)
    rows = vtp.rows_to_keep(N, video, S)
    marks[3].record()
    x, pos, cos, sin = vtp.drop_rows(x, pos, cos, sin, caches[: method.layer], rows)
    marks[4].record()
    x = decoder.prefill_tail(method.layer, x, pos, caches)
    marks[5].record()
    logits = model.head(x[:, -1:])[0, -1]
    marks[6].record()
    torch.cuda.synchronize()
    return [marks[i].elapsed_time(marks[i + 1]) for i in range(6)], logits


def main():
    model = random_model(VICUNA_7B)
    embeds = torch.randn(1, N, VICUNA_7B.dim, device="cuda", dtype=torch.bfloat16) * 0.02
    names = ["layers 1..M", "scores (Eq. 4)", "choice (Eq. 5-6)", "drop rows, caches (Eq. 7-8)", "tail graph + copies",
             "head"]
    for method in (Method(alpha=0.1, layer=5), Method(alpha=0.1, layer=10)):
        decoder = FastDecoder(model)
        caches = model.new_caches(1, N + 8)
        ref = prefill(model, embeds, caches, method=method, video=vtp.VideoSpan(PREFIX, T, NV))[0]
        for _ in range(3):
            _, logits = segments(model, embeds, method, decoder, caches)
        err = ((logits - ref).abs().max() / ref.abs().max()).item()
        runs = [segments(model, embeds, method, decoder, caches)[0] for _ in range(20)]
        med = [statistics.median(r[i] for r in runs) for i in range(6)]
        print(f"a{method.alpha} M{method.layer} (logits vs prefill: rel err {err:.1e}): total {sum(med):.2f} ms = " +
              ", ".join(f"{n} {m:.2f}" for n, m in zip(names, med)), flush=True)


if __name__ == "__main__":
    main()
