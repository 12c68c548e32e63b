"""The rivals (minivtp/rivals/) against independent float64 recomputations (tests/oracle.py), hand-made
attention maps with known answers, and transformers' CLIP; and the cases where each must equal the unpruned model."""

import math
from fractions import Fraction

import pytest
import torch
from conftest import prompt, write_llama
from oracle import causal, decode64, forward64, layers64

import weights
from minivtp.generate import Method, generate
from minivtp.vtp import VideoSpan
from minivtp.rivals import FastV, LookM, PruMergePlus, look_m, prumerge


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("rivals_llama")
    hf = write_llama(path, seed=21, num_hidden_layers=4, num_key_value_heads=2)
    return weights.load(path), hf


def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


# ---- FastV ------------------------------------------------------------------------------------------------------


def fastv64(sd, cfg, tokens, start, T, Nv, alpha, K):
    """FastV read from its description: the last row's attention at layer K, mean over heads, top ceil(alpha*T*Nv)
    of the video; then masks: layers 1..K see every row (their caches are whole), later layers lose the dropped."""
    L, N = cfg.num_hidden_layers, len(tokens)
    _, A = forward64(sd, cfg, tokens, [causal(N)] * L, keep_attention_of=K)
    a = A.mean(0)[N - 1, start : start + T * Nv].tolist()
    k = math.ceil(Fraction(str(alpha)) * T * Nv)
    S = sorted(start + j for j in sorted(range(T * Nv), key=lambda j: -a[j])[:k])
    return S


def fastv_masks(N, n_total, start, end, S, K, L):
    dropped = torch.zeros(n_total, dtype=torch.bool)
    dropped[start:end] = True
    dropped[torch.as_tensor(S, dtype=torch.long)] = False
    late = causal(n_total)
    late[:, dropped] = False
    gone = dropped.nonzero().flatten()
    late[gone, gone] = True  # a dropped row sees itself so its softmax stays finite; nothing reads it
    return [causal(n_total)] * K + [late] * (L - K)


# float32 against float64 over 4 layers, FastV's and Look-M's cases below. Measured with python
# tools/oracle_errors.py, each case on 4 checkpoints x 5 prompts (60 runs each): at most 4.8e-6 (FastV) and 2.7e-6
# (Look-M) relative to the largest logit. 2e-5 is 4-7x that, about 170 float32 epsilons: room for another seed or
# kernel order, below a small numeric bug (RMSNorm's eps twice too large: 7e-5 in test_vtp's cases, which the 1e-4
# before let through).
ORACLE_TOL = 2e-5
# Look-M's reported scores, the attention layer 1's rows receive: at most 3.7e-7 of the largest (60 runs, mean
# 1.8e-7; one layer of float32, so less error than the logits'); 2e-6 is 5x the worst.
SCORES_TOL = 2e-6
FASTV_CASES = [(1, 0.25), (2, 0.1), (4, 0.3)]  # (K, alpha)


def fastv_error(model, hf, K, alpha, seed):
    """FastV through generate() against fastv64 and the float64 forward: (Generation, S, relative logit error)."""
    start, T, Nv, Nq, n_new = 3, 4, 8, 5, 5
    N = start + T * Nv + Nq
    tokens = prompt(seed, N)
    out = generate(model, model.embed(tokens)[None], n_new, video=VideoSpan(start, T, Nv),
                   method=FastV(alpha=alpha, layer=K))
    sd, cfg = hf.state_dict(), hf.config
    S = fastv64(sd, cfg, tokens, start, T, Nv, alpha, K)
    seq = torch.cat([tokens, out.tokens[:-1]])
    L = cfg.num_hidden_layers
    ref = forward64(sd, cfg, seq, fastv_masks(N, len(seq), start, start + T * Nv, S, K, L))[N - 1 :]
    return out, S, rel(out.logits, ref)


@pytest.mark.parametrize("K,alpha", FASTV_CASES)
def test_fastv_equals_float64_recomputation(ckpt, K, alpha):
    model, hf = ckpt
    out, S, err = fastv_error(model, hf, K, alpha, seed=K)
    N, video_rows = 3 + 4 * 8 + 5, 4 * 8
    assert out.kept.tolist() == S
    # layers 1..K keep every prompt row in their caches; K+1..L only the kept ones; cache_len is layer 1's
    assert out.cache_lens == [N] * K + [N - (video_rows - len(S))] * (4 - K) and out.cache_len == N
    assert err <= ORACLE_TOL, err


def test_fastv_ranks_across_frames_llm_vtp_within(ckpt):
    model, _ = ckpt
    tokens = prompt(30, 45)
    video = VideoSpan(2, 4, 9)
    theirs = generate(model, model.embed(tokens)[None], 1, video=video, method=FastV(alpha=0.25, layer=2))
    ours = generate(model, model.embed(tokens)[None], 1, video=video, alpha=0.25, layer=2)
    assert theirs.kept.numel() == math.ceil(0.25 * 36) == 9 and ours.kept.numel() == 4 * 3
    per_frame = [((theirs.kept - 2) // 9 == t).sum().item() for t in range(4)]
    assert sum(per_frame) == 9  # any split over the frames; LLM-VTP's is always 3 each


# ---- Look-M -----------------------------------------------------------------------------------------------------


def look_m64(sd, cfg, tokens, start, end, recent, important, how, kept_rows=None):
    """Look-M from its description, in plain loops: per layer, keep the recent rows and the important ones (text
    first, then by received attention), merge each evicted row into its most similar kept row per head.
    `kept_rows`, a list, receives each layer's kept prompt rows."""
    N = len(tokens)
    caches = []
    for k, v, received in layers64(sd, cfg, tokens):
        n_recent, n_imp = int(N * recent), int(N * important)
        older = list(range(N - n_recent))
        is_text = {i: not (start <= i < end) for i in older}
        ranked = sorted(older, key=lambda i: (not is_text[i], -received[i].item()))
        kept = sorted(ranked[:n_imp] + list(range(N - n_recent, N)))
        if kept_rows is not None:
            kept_rows.append(kept)
        gone = [i for i in range(N) if i not in kept]
        K, V = k[:, kept].clone(), v[:, kept].clone()
        for h in range(k.shape[0]):
            groups = {j: [] for j in range(len(kept))}
            for e in gone:
                cos = [torch.nn.functional.cosine_similarity(k[h, e], k[h, i], dim=0).item() for i in kept]
                groups[max(range(len(kept)), key=lambda j: cos[j])].append(e)
            for j, members in groups.items():
                if not members or how == "none":
                    continue
                i = kept[j]
                for src, dst in ((k, K), (v, V)):
                    extra = [src[h, e] for e in members]
                    if how == "pivotal":
                        extra = [(x + src[h, i]) / 2 for x in extra]
                    dst[h, j] = (src[h, i] + sum(extra)) / (1 + len(extra))
        caches.append((K, V))
    return caches


LOOK_M_CASES = [(0.1, 0.2, "average"), (0.2, 0.1, "pivotal"), (0.15, 0.15, "none")]  # (recent, important, merge)


def look_m_error(model, hf, recent, important, how, seed):
    """Look-M through generate() against look_m64's caches and float64 decoding: (Generation, relative logit error,
    relative error of the reported scores, layer 1's received attention)."""
    start, T, Nv, Nq, n_new = 3, 4, 8, 5, 5
    N = start + T * Nv + Nq
    tokens = prompt(seed, N)
    method = LookM(recent=recent, important=important, merge=how)
    out = generate(model, model.embed(tokens)[None], n_new, video=VideoSpan(start, T, Nv), method=method)
    sd, cfg = hf.state_dict(), hf.config
    rows = []
    caches = look_m64(sd, cfg, tokens, start, start + T * Nv, recent, important, how, rows)
    # what generate reports for Look-M: the rows of layer 1's cache, and the video tokens among them
    assert out.pruning.rows.tolist() == rows[0] and out.pruning.layer is None
    assert out.kept.tolist() == [i for i in rows[0] if start <= i < start + T * Nv]
    first = forward64(sd, cfg, tokens, [causal(N)] * cfg.num_hidden_layers)[N - 1 :]  # prefill itself is not pruned
    ref = torch.cat([first, decode64(sd, cfg, caches, out.tokens[:-1], N)])
    received = layers64(sd, cfg, tokens)[0][2][start : start + T * Nv]  # layer 1, the video rows
    return out, rel(out.logits, ref), rel(out.pruning.scores, received)


@pytest.mark.parametrize("recent,important,how", LOOK_M_CASES)
def test_look_m_equals_float64_recomputation(ckpt, recent, important, how):
    model, hf = ckpt
    out, err, scores_err = look_m_error(model, hf, recent, important, how, seed=int(recent * 100))
    N = 3 + 4 * 8 + 5
    assert out.cache_lens == [int(N * recent) + int(N * important)] * 4
    assert err <= ORACLE_TOL, err
    assert scores_err <= SCORES_TOL, scores_err


def test_look_m_keeps_text_before_video_and_the_recent_rows():
    video = VideoSpan(start=2, frames=2, tokens_per_frame=4)  # rows 2..9 video, 10..11 question
    scores = torch.tensor([0.1, 0.2, 9, 8, 7, 6, 5, 4, 3, 2, 0.5, 0.4])  # video rows score far above text
    kept, evicted = look_m.look_m_rows(scores, video, recent=2 / 12, important=4 / 12)
    # recent: rows 10, 11; important 4: text rows 0 and 1 first (text prior), then the two best video rows 2, 3
    assert kept.tolist() == [0, 1, 2, 3, 10, 11] and evicted.tolist() == [4, 5, 6, 7, 8, 9]


def test_merge_by_hand():
    from minivtp.model import KVCache
    cache = KVCache(1, 1, 4, 2)
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1], [0.1, 3.0]]).view(1, 1, 4, 2)
    v = torch.tensor([[10.0, 0], [0, 10], [20, 20], [30, 30]]).view(1, 1, 4, 2)
    cache.append(k, v, torch.arange(4))
    look_m.merge_evicted(cache, torch.tensor([0, 1]), torch.tensor([2, 3]), "average")
    # row 2 points like row 0, row 3 like row 1: each kept row becomes the mean of itself and its evicted row
    assert cache.length == 2 and cache.pos[:2].tolist() == [0, 1]
    torch.testing.assert_close(cache.k[0, 0, :2], torch.tensor([[1.5, 0.05], [0.05, 2.0]]))
    torch.testing.assert_close(cache.v[0, 0, :2], torch.tensor([[15.0, 10.0], [15.0, 20.0]]))


# ---- everything kept: equal to the unpruned model ---------------------------------------------------------------


@pytest.mark.parametrize("method", [FastV(alpha=1.0, layer=2), LookM(recent=0.6, important=0.5),
                                    Method(alpha=1.0, layer=3)], ids=["fastv", "look-m", "llm-vtp"])
def test_keeping_everything_is_the_unpruned_model(ckpt, method):
    model, _ = ckpt
    embeds = model.embed(prompt(40, 41))[None]
    plain = generate(model, embeds, 6)
    same = generate(model, embeds, 6, video=VideoSpan(3, 4, 8), method=method)
    assert same.tokens.tolist() == plain.tokens.tolist() and same.cache_lens == [41] * 4
    assert rel(same.logits, plain.logits.double()) <= 1e-5


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="prumerge+"), r"method='prumerge\+' must be one of 'llm-vtp', 'random', 'complement' \(the rivals"),
    (dict(method=LookM(recent=1.5)), r"recent=1.5 is outside \[0, 1\]"),
    (dict(method=LookM(recent=0.0, important=0.0)), r"would keep no row"),
    (dict(method=LookM(merge="sum")), r"merge='sum' must be one of 'average', 'pivotal', 'none'"),
    (dict(method=FastV(alpha=0.0, layer=2)), r"alpha=0.0 is outside \(0, 1\]"),
    (dict(method=FastV(alpha=0.5, layer=9)), r"layer=9 is outside 1..4"),
])
def test_bad_method_parameters(ckpt, kwargs, match):
    model, _ = ckpt
    with pytest.raises(ValueError, match=match):
        generate(model, model.embed(prompt(1, 30))[None], 2, video=VideoSpan(2, 3, 8), **kwargs)


# ---- PruMerge+ ----------------------------------------------------------------------------------------------------


def test_iqr_outliers_by_hand():
    # 16 patches: twelve at 1, two at 2, two far out at 10 and 9. Q1 = 1, Q3 = 1.25 (linear), upper fence 1.625
    a = torch.tensor([1.0] * 12 + [2.0, 2.0, 10.0, 9.0])
    assert prumerge.iqr_outliers(a).tolist() == [14, 15, 12, 13]  # by score, ties in index order
    assert prumerge.iqr_outliers(torch.ones(10)).numel() == 0  # no spread: no outlier


def test_prumerge_plus_keeps_outliers_and_uniform_samples():
    P = 36
    a = torch.full((P,), 0.01)
    a[[7, 20]] = 0.5  # two outliers: ratio 2/36, step int(36 / 2) // 3 = 6 -> samples 0, 6, ..., 30
    kept = prumerge.prumerge_plus_keep(a)
    assert kept.tolist() == [0, 6, 7, 12, 18, 20, 24, 30]
    flat = prumerge.prumerge_plus_keep(torch.full((P,), 0.02))  # no outlier: the top patch (index 0), step 12
    assert flat.tolist() == [0, 12, 24]


def test_prumerge_merge_by_hand():
    x = torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, 0]])  # 4 patches, features
    keys = torch.tensor([[1.0, 0], [0, 1], [0.1, 1], [1, 0.1]])  # 2 is like 1, 3 is like 0
    a = torch.tensor([0.4, 0.3, 0.2, 0.1])
    out = prumerge.prumerge_merge(x, keys, a, torch.tensor([0, 1]), neighbours=1)
    # patch 0 + 0.1 * patch 3; patch 1 + 0.2 * patch 2; extra = 0.2 * patch 2 + 0.1 * patch 3
    torch.testing.assert_close(out, torch.tensor([[1.2, 0.0], [0.2, 1.2], [0.4, 0.2]]))


def test_cls_attention_equals_transformers_clip(llava):
    hf = llava[2].eval()
    from minivtp.hosts.llava import VideoLLM
    model = weights.load_video_llm(llava[0])
    assert isinstance(model, VideoLLM)
    pixels = torch.randn(2, 3, 28, 28)
    captured = {}
    tower = hf.model.vision_tower if hasattr(hf, "model") else hf.vision_tower
    encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
    last = encoder.layers[-1].self_attn  # the block after layer -2, as PruMerge hooks it
    hooks = [last.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
             last.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))]
    with torch.no_grad():
        tower(pixels, output_hidden_states=True)
        for h in hooks:
            h.remove()
        ref = (captured["q"] @ captured["k"].transpose(-1, -2) * captured["q"].shape[-1] ** -0.5).softmax(-1)[:, 0, 1:]
        ours, keys = prumerge.cls_attention(model.vision.layers[-1], model.vision(pixels, -2))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)  # float32 both ways, different op order
    torch.testing.assert_close(keys, captured["k"][:, 1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["llava", "pllava", "tarsier"])
def test_prumerge_prompt_on_each_video_llm(llava, tmp_path, which):
    import json
    import shutil
    from minivtp.tokenizer import Tokenizer
    path = {"llava": llava[0], "pllava": llava[1]}.get(which)
    if which == "tarsier":
        path = tmp_path / "tarsier"
        shutil.copytree(llava[0], path)
        cfg = json.loads((path / "config.json").read_text())
        cfg.update(image_newline_idx=5, image_new_idx=6)
        (path / "config.json").write_text(json.dumps(cfg))
    model = weights.load_video_llm(path)
    tok = Tokenizer.from_file(llava[0])
    ids = torch.tensor(tok.encode("USER: <image> what is it? ASSISTANT:"))
    pixels = torch.randn(4, 3, 28, 28)
    with torch.no_grad():
        full, span, _ = model.prompt(ids, pixels)
        merged, video, _ = PruMergePlus().prompt(model, ids, pixels)
    assert isinstance(video, prumerge.MergedVideo) and video.unpruned_rows == span.end - span.start
    assert merged.shape[1] - (video.end - video.start) == full.shape[1] - (span.end - span.start)  # text untouched
    torch.testing.assert_close(merged[0, : video.start], full[0, : span.start])
    torch.testing.assert_close(merged[0, video.end :], full[0, span.end :])
    assert 0 < video.kept_ratio <= 1 and len(video.tokens_per_frame) == span.frames
    if which == "tarsier":  # every frame still ends with its separator
        ends = torch.tensor(video.tokens_per_frame).cumsum(0) + video.start - 1
        for e in ends.tolist():
            torch.testing.assert_close(merged[0, e], model.llm.embed.weight[6])
    out = generate(model.llm, merged, 3)
    assert out.prompt_len == merged.shape[1]
    with pytest.raises(ValueError, match="video must be a VideoSpan"):
        generate(model.llm, merged, 3, video=video, alpha=0.5, layer=1)


def test_prumerge_frame_by_hand_through_the_model(llava):
    # one frame of plain LLaVA: the tokens are exactly prumerge_plus on CLIP's patches, then the projector
    model = weights.load_video_llm(llava[0])
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        ids = torch.tensor([1, model.image_token, 5])
        merged, video, _ = PruMergePlus().prompt(model, ids, pixels)
        rows = merged[0, video.start : video.end]
        h = model.vision(pixels, -2)
        a, keys = prumerge.cls_attention(model.vision.layers[-1], h)
        want = model.projector(prumerge.prumerge_plus(h[0, 1:], keys[0], a[0])[0])
    torch.testing.assert_close(rows, want)
    assert video.unpruned_rows == 16 and video.tokens_per_frame == (rows.shape[0],)


def test_cli_runs_every_method(llava, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    from safetensors.torch import save_file
    root = Path(__file__).resolve().parents[1]
    frames = tmp_path / "clip.safetensors"
    save_file({"frames": torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)}, frames)
    base = [sys.executable, "-m", "minivtp", "answer", "--weights", str(llava[1]), "--video", str(frames),
            "--question", "What is it?", "--max-new-tokens", "3", "--device", "cpu", "--json"]
    seen = {}
    for method, extra in (("llm-vtp", ["--alpha", "0.5", "--layer", "2"]), ("fastv", ["--alpha", "0.5", "--layer", "2"]),
                          ("look-m", ["--recent", "0.1", "--important", "0.2"]), ("prumerge+", []),
                          ("random", ["--alpha", "0.5", "--layer", "1"]), ("complement", ["--alpha", "0.5", "--layer", "1"])):
        out = subprocess.run(base + ["--method", method] + extra, capture_output=True, text=True, cwd=root, timeout=300)
        assert out.returncode == 0, (method, out.stderr)
        seen[method] = d = json.loads(out.stdout)
        assert d["method"] == method and d["video_tokens"] == 8 and 0 <= d["kept_ratio"] <= 1  # Look-M may keep none
        assert len(d["cache_rows_per_layer"]) == 3
    N = seen["llm-vtp"]["prompt_rows"]
    assert seen["llm-vtp"]["cache_rows_per_layer"] == [N - 4] * 3  # 2 of 4 tokens kept in each of 2 pooled frames
    assert seen["fastv"]["cache_rows_per_layer"] == [N, N, N - 4]  # layers 1..K keep every row
    assert seen["look-m"]["cache_rows_per_layer"] == [int(N * 0.1) + int(N * 0.2)] * 3
    assert seen["prumerge+"]["prompt_rows"] == N - 8 + seen["prumerge+"]["kept_video_tokens"]
