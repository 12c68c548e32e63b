"""bench/'s scripts run: each with --tiny on the CPU, and the JSON it writes holds what the tables of
bench/RESULTS.md are read from. Nothing here times anything (benchmarks print ratios; tests assert none).

Where a figure can be known without the script, it is checked against that: the kept rows from Eq. 5's
ceil(alpha * Nv) per frame, the unpruned KV bytes from the config, the fast path's tokens against the eager
path's, the prompt transformers builds against the one minivtp builds."""

import json
import math
from pathlib import Path

import pytest
import torch

from bench import common, e2e, floors, frames, oneshot

S = common.shape(tiny=True)
# --tiny runs on a GPU where there is one (bf16, compiled parts included: minutes); these check the CPU run
ON_CPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks --tiny on the CPU; a GPU runs the full shape")
KEPT_ROWS = S.prefix + S.frames * math.ceil(0.1 * S.nv) + S.question  # Eq. 5 at alpha 0.1: prefix + S + question


def read(path):
    res = json.loads(path.read_text())
    for key in ("device", "torch", "command", "date"):  # every JSON names the machine and what ran
        assert res[key], key
    return res


@ON_CPU
def test_e2e_tiny_writes_every_question_and_the_growth(tmp_path):
    assert e2e.main(["--tiny", "--out", str(tmp_path), "--parts", "eager,graphs,growth,hf"]) == 0
    res = read(tmp_path / "e2e.json")
    mv = res["minivtp"]
    for n in S.new_tokens:
        for setting in common.QUESTION_SETTINGS:
            row = mv[f"{setting} | {n}"]
            assert row["median_s"] > 0 and row["first_s"] > 0 and row["prompt_rows"] > 0
        assert mv[f"unpruned eager | {n}"]["median_s"] > 0
        assert mv[f"unpruned | {n}"]["cache_rows"] == S.rows
        assert mv[f"llm-vtp a0.1 M10 | {n}"]["cache_rows"] == KEPT_ROWS
        assert res["transformers"][f"default | {n}"]["median_s"] > 0
    # every figure an earlier commit's bench/e2e.py wrote (a run of it is in bench/results) has its namesake
    # here, so `python -m bench.e2e --compare OLD NEW` lines them up; compiled and static do not run on a CPU
    old = common.timings(json.loads((Path(common.ROOT) / "bench/results/e2e-h100-2026-11-24e.json").read_text()))
    new = common.timings(res)
    tiny = {"| 5 /": f"| {S.new_tokens[0]} /", "| 72 /": f"| {S.new_tokens[1]} /"}
    for key in old:
        if "compiled" in key or "static" in key:
            continue
        for a, b in tiny.items():
            key = key.replace(a, b)
        assert key in new, key
    rows = {(r["frames"], r["setting"]): r for r in res["growth"]}
    assert sorted(rows) == sorted((T, s) for T in S.growth for s in ("unpruned", "llm-vtp a0.1 M10"))
    for T in S.growth:
        full = rows[T, "unpruned"]
        # K and V of every row in every layer, float32 on the CPU
        assert full["kv_gb"] * 1e9 == pytest.approx(2 * S.text.n_layers * full["prompt_rows"] * S.text.dim * 4)
        assert rows[T, "llm-vtp a0.1 M10"]["kv_gb"] < full["kv_gb"]
        for k in S.new_tokens:
            assert full[f"total_ms_{k}"] > 0


@ON_CPU
def test_floors_tiny_fast_path_gives_the_eager_tokens(tmp_path):
    assert floors.main(["--tiny", "--out", str(tmp_path), "--parts", "check,decode,prefill,released"]) == 0
    res = read(tmp_path / "floors.json")  # the batch part: its own test below
    check = res["check_float32"]
    assert check["all_same_tokens"] is True
    assert all(check[k]["logits_rel_err"] < 1e-4 for k in common.PAPER_SETTINGS if k != "none")
    assert res["copy_bytes_per_s"] > 0
    assert res["decode plain"]["eager_ms"] > 0 and res["decode plain"]["floor_ms"] > 0
    fused = res["decode fused q+k+v, gate+up"]
    assert fused["graph_ms"] > 0 and fused["answer_ms"] > 0 and fused["answer_no_compile_ms"] > 0
    assert "decode fused+compiled" not in res  # skipped on a CPU, with a printed reason
    for variant in ("plain", "fused q+k+v, gate+up"):
        table = res[f"prefill {variant}"]
        assert set(common.PAPER_SETTINGS) <= set(table)
        assert table["none"]["flops_ratio"] == 1
        for name in ("a0.2 M5", "a0.2 M10", "a0.1 M5", "a0.1 M10"):
            assert table[name]["flops_ratio"] > 1
            # the graph tail pads the rows after M; the real rows' logits are the loop's (float32)
            assert table[name]["logits_rel_err_graph_vs_loop"] < 1e-5
            assert table[name]["loop_ms"] > 0 and table[name]["graph_of_ratio"] > 0


@ON_CPU
def test_floors_tiny_batch_part(tmp_path):
    """bench.floors --parts batch on the CPU: every cell written, the kept rows those of Eq. 5, the floors' bytes
    from the config, every batched answer the one-at-a-time answer (float32)."""
    assert floors.main(["--tiny", "--out", str(tmp_path), "--parts", "batch", "--batch-budget", "60"]) == 0
    res = read(tmp_path / "floors.json")["batch"]
    assert res["kv unpruned"]["rows"] == S.rows and res["kv a0.1 M10"]["rows"] == KEPT_ROWS
    row = 2 * S.text.n_layers * S.text.n_kv_heads * S.text.head_dim * 4  # K and V of a row, every layer, float32
    assert res["kv unpruned"]["kv_bytes_per_question"] == (S.rows + max(S.new_tokens)) * row
    for name in floors.BATCH_SETTINGS:
        for B in (1, 3):
            for n in S.new_tokens:
                r = res[f"{name} | B {B} | {n}"]
                assert r["questions_per_s"] > 0 and r["decode_ms_per_step"] > 0
                assert 0 <= r["padding"] < 1 and r["floor_held_ms"] <= r["floor_ms"]
                # the floor: the weights but the embedding table, once, and the slots the step reads
                assert r["floor_ms"] == pytest.approx((res["weight_bytes_per_step"] + r["kv_slots_read"] * row)
                                                      / res["copy_bytes_per_s"] * 1e3)
    assert res["agreement"]["same"] == res["agreement"]["batch"] == 3
    assert res["transformers unpruned | B 3 | 4"]["questions_per_s"] > 0


def test_frames_tiny_keeps_sixteen_frames_with_both_readers(tmp_path):
    pytest.importorskip("av", reason="bench/frames.py makes and reads clips with PyAV")
    assert frames.main(["--tiny", "--out", str(tmp_path)]) == 0
    res = read(tmp_path / "frames.json")
    assert {r["reader"] for r in res["rows"]} == {"minivtp", "decode-everything"}
    assert all(r["kept"] == 16 and r["peak_rss_mb"] > 0 for r in res["rows"])


@ON_CPU
def test_oneshot_tiny_times_whole_commands(tmp_path):
    out = tmp_path / "out"
    assert oneshot.main(["--tiny", "--out", str(out), "--dir", str(tmp_path / "ckpt"), "--repeats", "1",
                         "--questions", "2", "--parts", "answer,transformers,eval-cache"]) == 0
    res = read(out / "oneshot.json")
    ours, theirs = res["runs"]["answer | 4"][0], res["runs"]["transformers | 4"][0]
    for row in (ours, theirs):
        assert row["rc"] == 0 and row["wall_s"] > 0 and "error" not in row
    assert ours["new_tokens"] <= 4 and theirs["new_tokens"] == 4
    # answer's prompt has its own text rows; the video's T * Nv rows become T * ceil(0.1 Nv) (Eq. 5)
    assert ours["cache_rows"] == ours["prompt_rows"] - S.frames * S.nv + S.frames * math.ceil(0.1 * S.nv)
    assert ours["prompt_rows"] == theirs["prompt_rows"]  # the same prompt, tokenized and spliced by each side
    evals = res["eval"]["compiled"]
    assert evals[0]["rc"] == 0 and evals[0]["questions"] == 2 and len(evals[0]["question_s"]) == 2
    # the checkpoint is reused, not rewritten, by a second run on the same folder
    again = common.write_checkpoint(tmp_path / "ckpt", S)
    assert again.shards == res["checkpoint"]["shards"]


@ON_CPU
def test_attention_tiny_checks_every_kernel_it_times(tmp_path):
    assert floors.main(["--tiny", "--out", str(tmp_path), "--parts", "attention,gemm"]) == 0
    res = read(tmp_path / "floors.json")
    rows = res["attention"]
    assert set(rows) == {"L64 used50", "L50 used50"}
    for row in rows.values():  # every kernel that ran here gives float32 math's answer to bf16 rounding
        timed = [k[:-3] for k in row if k.endswith("_ms")]
        assert {"sdpa_default", "sdpa_math", "default_exact_nomask"} <= set(timed)
        assert all(row[k + "_err"] < 0.05 for k in timed), row
    assert all(r["us"] > 0 for M in res["gemm"].values() for r in M.values())
