"""The real error of every oracle comparison in the tests, over more checkpoints and prompts than the tests use.

    python tools/oracle_errors.py            # about a minute on 2 CPU cores

Each tolerance in tests/test_vtp.py, tests/test_rivals.py, tests/test_exercises.py and tests/test_weights.py
is set from these numbers with a stated margin; the comment above each one says which line of this table it
comes from. A tolerance far above the measured error is a place where a small numeric bug can hide; one at the
measured error fails on the next seed. Rerun this after a change to the numerics and revisit the bounds.
"""

import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

import test_rivals as tb  # noqa: E402
import test_vtp as tv  # noqa: E402
import test_weights as tw  # noqa: E402
from conftest import write_llama  # noqa: E402
from test_exercises import CAPSTONE_CASES  # noqa: E402

import weights  # noqa: E402

PROMPTS = range(5)  # prompt seeds per case and checkpoint


def checkpoints(seeds, **overrides):
    for seed in seeds:
        path = Path(tempfile.mkdtemp(prefix=f"oracle_errors_{seed}_"))
        hf = write_llama(path, seed=seed, **overrides)
        yield seed, weights.load(path), hf


def report(name, bound, errors):
    worst = max(errors)
    print(f"{name:58s} {len(errors):4d} runs   max {worst:.2e}   mean {sum(errors) / len(errors):.2e}   "
          f"bound {bound:.0e} ({bound / worst:.0f}x)" if worst else f"{name:58s} {len(errors):4d} runs   max 0")
    return worst


def main():
    torch.set_num_threads(1)
    llm_vtp, scores, fastv, look_m, look_m_scores, capstone = [], [], [], [], [], []
    four = dict(num_hidden_layers=4, num_key_value_heads=2)
    vtp_cases = [dict(start=0, T=4, Nv=8, Nq=6, alpha=0.25, layer=m, n_new=6) for m in (1, 2, 4)] + [
        dict(start=5, T=3, Nv=9, Nq=4, alpha=0.3, layer=2, n_new=5),
        dict(start=3, T=5, Nv=6, Nq=5, alpha=0.01, layer=3, n_new=4, pool="mean"),
        dict(start=3, T=4, Nv=8, Nq=5, alpha=0.3, layer=2, n_new=5, ranking="sequence")]
    # the tests' own checkpoints (test_vtp 5, test_rivals 21, the capstone 11) and one more
    for _, model, hf in checkpoints((5, 21, 11, 0), **four):
        for seed in PROMPTS:
            for case in vtp_cases:
                _, _, err, scores_err = tv.oracle_error(model, hf, seed=seed, **case)
                llm_vtp.append(err)
                scores.append(scores_err)
            for start, T, Nv, Nq, alpha, M, n_new in CAPSTONE_CASES:  # the capstone scores with the literal Eq. 4
                kw = dict(alpha=alpha, layer=M, scores="literal")
                capstone.append(tv.oracle_error(model, hf, start, T, Nv, Nq, alpha, M, n_new, seed=seed,
                                                keywords=kw)[2])
            for K, alpha in tb.FASTV_CASES:
                fastv.append(tb.fastv_error(model, hf, K, alpha, seed)[2])
            for recent, important, how in tb.LOOK_M_CASES:
                _, err, scores_err = tb.look_m_error(model, hf, recent, important, how, seed)
                look_m.append(err)
                look_m_scores.append(scores_err)
    for _, model, hf in checkpoints((6, 0, 1, 2), num_hidden_layers=10, num_key_value_heads=2):
        for seed in PROMPTS:
            llm_vtp.append(tv.oracle_error(model, hf, 2, 3, 8, 5, 0.25, 10, 4, seed=seed,
                                           keywords=dict(alpha=0.25))[2])
    print("float32 minivtp against the float64 oracle (relative to the largest logit):")
    report("LLM-VTP, test_vtp.py oracle cases (ORACLE_TOL)", tv.ORACLE_TOL, llm_vtp)
    report("LLM-VTP scores a_v at layer M, test_vtp.py (SCORES_TOL)", tv.SCORES_TOL, scores)
    report("LLM-VTP literal scores, the capstone (test_exercises.py)", 2e-5, capstone)
    report("FastV, test_rivals.py (ORACLE_TOL)", tb.ORACLE_TOL, fastv)
    report("Look-M, test_rivals.py (ORACLE_TOL)", tb.ORACLE_TOL, look_m)
    report("Look-M received attention at layer 1 (SCORES_TOL)", tb.SCORES_TOL, look_m_scores)

    print("float32 minivtp against transformers' float32 forward (weights.load):")
    loader = []
    for name, overrides in tw.VARIANTS.items():
        for seed in (0, 1, 2):
            with tempfile.TemporaryDirectory() as d:
                hf = write_llama(d, seed=seed, **overrides)
                model = weights.load(d)
                for t in PROMPTS:
                    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(t))
                    with torch.no_grad():
                        loader.append(tw.rel_err(model(tokens), hf(tokens).logits))
    report("every VARIANT of test_weights.py (LOGITS_TOL)", tw.LOGITS_TOL, loader)


if __name__ == "__main__":
    main()
