"""The fast path (minivtp/fast/__init__.py) against the readable one: the same tokens and logits.

On a CPU the graphs are not captured (GraphDecode and PrefillTail run their functions directly), so the tests
here check the logic: static slots, positions after pruning, padded prefill tails, compiles. The class at the
end captures and replays the CUDA graphs on a GPU and is skipped elsewhere."""

from pathlib import Path

import pytest
import torch
from conftest import prompt, write_llama

import weights
from minivtp import fast
from minivtp.fast import FastDecoder, StaticKVCache
from minivtp.generate import Method, generate, prefill
from minivtp.model import EMPTY, KVCache
from minivtp.rivals import FastV, LookM
from minivtp.vtp import VideoSpan


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("fast_llama")
    hf = write_llama(path, seed=5, num_hidden_layers=4, num_key_value_heads=2)
    return weights.load(path), hf


def one_shot(model):  # what `answer --fast-decode` decodes with on a CPU: the graph path, none of the prefill
    return FastDecoder(model, bucket=1, prefill_bucket=0)


@pytest.mark.parametrize("alpha,layer", [(1.0, 2), (0.25, 1), (0.25, 4)])
def test_static_cache_decode_equals_eager(ckpt, alpha, layer):
    model, _ = ckpt
    embeds = model.embed(prompt(9, 44))[None]
    video = VideoSpan(start=4, frames=4, tokens_per_frame=8)
    eager = generate(model, embeds, 10, video=video, alpha=alpha, layer=layer)
    fast = generate(model, embeds, 10, video=video, alpha=alpha, layer=layer, decoder=one_shot(model))
    assert fast.tokens.tolist() == eager.tokens.tolist()
    torch.testing.assert_close(fast.logits, eager.logits, rtol=1e-5, atol=1e-5)


def test_static_write_fills_slots_with_their_positions():
    cache = KVCache(1, 1, 12, 2)
    cache.append(torch.randn(1, 1, 8, 2), torch.randn(1, 1, 8, 2), torch.arange(8))
    cache.keep(torch.tensor([0, 2, 5, 7]))
    static = StaticKVCache.from_cache(cache, 6)  # 4 kept rows + 2 new tokens
    torch.testing.assert_close(static.k[:, :, :4], cache.k[:, :, :4])
    k_new = torch.randn(1, 1, 1, 2)
    static.step.fill_(0)  # step 0: the token after the 4 kept rows
    K, V, P = static.append(k_new, k_new, torch.tensor([8]))
    assert K.shape == (1, 1, 6, 2)
    assert P.tolist()[:5] == [0, 2, 5, 7, 8] and P[5] == EMPTY
    torch.testing.assert_close(K[:, :, 4:5], k_new)


def test_static_cache_refuses_fewer_slots_than_rows():
    cache = KVCache(1, 1, 8, 2)
    cache.append(torch.randn(1, 1, 5, 2), torch.randn(1, 1, 5, 2), torch.arange(5))
    with pytest.raises(ValueError, match="cannot fit a cache holding 5 rows into 4 slots"):
        StaticKVCache.from_cache(cache, 4)


def test_fuse_qkv_computes_the_same_numbers_from_one_weight():
    """One product of the concatenated weight equals the three products (float32: only the summation order of a
    wider matmul may differ), biases and grouped-query heads included, and nothing is stored twice."""
    from minivtp import model as model_py
    cfg = model_py.Config(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                          attention_bias=True)
    torch.manual_seed(5)
    model = model_py.Transformer(cfg).eval()
    for p in model.parameters():  # biases start at zero: make them count
        torch.nn.init.normal_(p, std=0.3)
    tokens = torch.randint(0, 50, (1, 23))
    embeds = model.embed(tokens)
    want = model(tokens).detach()
    want_gen = generate(model, embeds, 6, video=VideoSpan(3, 3, 5), alpha=0.4, layer=1)
    n_params = sum(p.numel() for p in model.parameters())
    assert fast.fuse_qkv(model) is model and fast.fuse_qkv(model) is model  # a second call changes nothing
    a = model.layers[1].attn
    weight, bias = a.wqkv
    assert weight.shape == (4 * 8 + 2 * 2 * 8, 32) and bias.shape == (4 * 8 + 2 * 2 * 8,)
    for lin, start in ((a.wq, 0), (a.wk, 32), (a.wv, 48)):  # views into the fused weight, the same values
        assert lin.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
        assert torch.equal(lin.weight, weight[start : start + lin.out_features])
        assert torch.equal(lin.bias, bias[start : start + lin.out_features])
    assert sum(p.numel() for p in model.parameters()) == n_params
    torch.testing.assert_close(model(tokens), want, rtol=1e-5, atol=1e-5)
    got_gen = generate(model, embeds, 6, video=VideoSpan(3, 3, 5), alpha=0.4, layer=1)
    assert got_gen.tokens.tolist() == want_gen.tokens.tolist() and torch.equal(got_gen.kept, want_gen.kept)


def test_fuse_gate_up_computes_the_same_numbers_from_one_weight():
    """The MLP's gate and up from one product of their concatenated weight: the same logits (float32: only the
    summation order of a wider matmul may differ), biases included, views of one weight, nothing stored twice;
    fast.prepare(compile=False) fuses both q+k+v and gate+up."""
    from minivtp import model as model_py
    cfg = model_py.Config(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, mlp_bias=True)
    torch.manual_seed(6)
    model = model_py.Transformer(cfg).eval()
    for p in model.parameters():  # biases start at zero: make them count
        torch.nn.init.normal_(p, std=0.3)
    tokens = torch.randint(0, 50, (1, 19))
    want = model(tokens).detach()
    want_gen = generate(model, model.embed(tokens), 6, video=VideoSpan(3, 3, 5), alpha=0.4, layer=1)
    n_params = sum(p.numel() for p in model.parameters())
    assert fast.prepare(model, compile=False) is model
    assert fast.fuse_gate_up(model) is model  # a second call changes nothing
    for layer in model.layers:
        assert isinstance(layer.mlp, fast.FusedMLP) and isinstance(layer.attn, fast.FusedQKVAttention)
    m = model.layers[0].mlp
    weight, bias = m.w_gate_up
    assert weight.shape == (2 * 48, 32) and bias.shape == (2 * 48,)
    for lin, start in ((m.w_gate, 0), (m.w_up, 48)):
        assert lin.weight.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
        assert torch.equal(lin.weight, weight[start : start + 48]) and torch.equal(lin.bias, bias[start : start + 48])
    assert sum(p.numel() for p in model.parameters()) == n_params
    torch.testing.assert_close(model(tokens), want, rtol=1e-5, atol=1e-5)
    got_gen = generate(model, model.embed(tokens), 6, video=VideoSpan(3, 3, 5), alpha=0.4, layer=1)
    assert got_gen.tokens.tolist() == want_gen.tokens.tolist() and torch.equal(got_gen.kept, want_gen.kept)


def compiles_per_question(model, fast_model, decoder, questions):
    """Each (seed, length) question through `model` eagerly and through `fast_model` with `decoder`: the same tokens,
    the same logits (float32; compiled kernels sum in another order). Returns torch.compile's count of compiled
    graphs after each question."""
    from torch._dynamo.utils import counters
    graphs = []
    for seed, n in questions:
        embeds = model.embed(prompt(seed, n))[None]
        eager = generate(model, embeds, 5, video=VideoSpan(4, 4, 8), alpha=0.25, layer=2)
        fast = generate(fast_model, embeds, 5, video=VideoSpan(4, 4, 8), alpha=0.25, layer=2, decoder=decoder)
        assert fast.tokens.tolist() == eager.tokens.tolist()
        torch.testing.assert_close(fast.logits, eager.logits, rtol=1e-4, atol=1e-4)
        graphs.append(counters["stats"]["unique_graphs"])
    return graphs


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports warn about torch.jit
def test_compile_blocks_compiles_one_block_for_all_layers_and_sizes(ckpt):
    """The L blocks share one compile; a second prompt and cache size compiles once more (sizes symbolic), later
    ones not at all; prefill, its tail and the decode graph give the eager model's tokens."""
    import copy
    import torch._dynamo
    from torch._dynamo.utils import counters
    model, _ = ckpt
    compiled = fast.compile_blocks(copy.deepcopy(model))
    torch._dynamo.reset()
    counters.clear()
    compiled.forward_embeds(model.embed(prompt(1, 30))[None])
    assert counters["stats"]["unique_graphs"] == 1  # one compile, run by all of the model's layers
    decoder = FastDecoder(compiled, bucket=16, prefill_bucket=8)
    # every question a new size somewhere
    graphs = compiles_per_question(model, compiled, decoder, ((31, 40), (32, 57), (33, 45), (34, 71), (35, 38)))
    assert len(decoder.graphs) >= 3 and len(decoder.tails) >= 3  # the later questions did meet new sizes
    assert graphs[2:] == [graphs[1]] * 3, graphs  # ... and compiled nothing for them,
    assert graphs[-1] < torch._dynamo.config.recompile_limit  # nor stopped compiling (torch then runs eager)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports warn about torch.jit
def test_the_tuned_decode_step_is_one_compile_for_all_layers(ckpt):
    """FastDecoder(step="tuned") decodes through tuned_block: the eager tokens, and one compile for every layer and
    every cache size (GraphDecode leaves the cache's length symbolic from the first compile, so a later process
    finds that one compile on disk whatever its video's length)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    model, _ = ckpt
    torch._dynamo.reset()
    counters.clear()
    decoder = FastDecoder(model, bucket=16, step="tuned")
    # a new decode cache size every time
    graphs = compiles_per_question(model, model, decoder, ((41, 40), (42, 57), (43, 71), (44, 88)))
    assert len(decoder.graphs) == 4
    assert graphs == [1, 1, 1, 1], graphs


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports warn about torch.jit
def test_eval_s_compiles_stay_under_torch_s_limit_across_models_and_sizes(ckpt):
    """As eval runs on CUDA (fast.prepare: compiled blocks; FastDecoder(step="tuned"): the tuned decode step),
    then a second model of another dtype through the same code: the eager tokens throughout, and no compiled
    function reaches torch's recompile_limit, past which torch silently runs it eagerly. The tuned decode step
    keeps its compiles apart from the blocks' (fast.decode_block); sharing one function they reached the
    limit here."""
    import copy
    import torch._dynamo
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list as compiled_versions
    from minivtp.fast import decode_block
    from minivtp.model import Block
    model, _ = ckpt
    torch._dynamo.reset()
    questions = ((51, 40), (52, 57), (53, 45), (54, 71))
    for m in (model, copy.deepcopy(model).double()):
        decoder = FastDecoder(fast.prepare(copy.deepcopy(m)), bucket=16, prefill_bucket=8, step="tuned")
        graphs = compiles_per_question(m, decoder.model, decoder, questions)
        assert graphs[2:] == [graphs[1]] * 2, graphs  # new sizes after the second question: no new compile
    limit = torch._dynamo.config.recompile_limit
    versions = [len(compiled_versions(f.__code__)) for f in (Block.forward, decode_block)]
    assert all(0 < n < limit for n in versions), (versions, limit)


def test_a_fast_decoder_serves_question_after_question(ckpt):
    model, _ = ckpt
    decoder = FastDecoder(model, bucket=64)
    for seed, n in ((11, 40), (12, 44), (13, 38), (14, 90)):  # three share a size bucket, the last does not
        embeds = model.embed(prompt(seed, n))[None]
        video = VideoSpan(4, 4, 8)
        eager = generate(model, embeds, 7, video=video, alpha=0.25, layer=2)
        fast = generate(model, embeds, 7, video=video, alpha=0.25, layer=2, decoder=decoder)
        assert fast.tokens.tolist() == eager.tokens.tolist()
        torch.testing.assert_close(fast.logits, eager.logits, rtol=1e-5, atol=1e-5)
    assert sorted(decoder.graphs) == [(64,) * 4, (128,) * 4]  # two sizes, two captures (on a GPU), not four
    with pytest.raises(ValueError, match="bucket=0 must be >= 1"):
        FastDecoder(model, bucket=0)


@pytest.mark.parametrize("method", [Method(alpha=0.25, layer=1), Method(alpha=0.4, layer=3), FastV(alpha=0.3, layer=2),
                                    Method("random", alpha=0.25, layer=2)])
def test_the_prefill_tail_equals_the_loop(ckpt, method):
    """Layers M+1..L through PrefillTail (padded to a bucket, as the graph runs them) give the loop's logits and
    every layer's cache rows and positions; a shorter prompt in the same bucket after a longer one as well."""
    model, _ = ckpt
    decoder = FastDecoder(model, prefill_bucket=32)  # about half of every tail's rows are padding
    for seed, n in ((21, 47), (22, 40)):
        embeds = model.embed(prompt(seed, n))[None]
        loop, tail = model.new_caches(1, n), model.new_caches(1, n)
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)  # the same random tokens
        run = prefill if isinstance(method, Method) else method.prefill  # FastV: its own prefill, the same tail
        want, p1 = run(model, embeds, loop, VideoSpan(4, 4, 8), *([method] if run is prefill else []), generator=g1)
        got, p2 = run(model, embeds, tail, VideoSpan(4, 4, 8), *([method] if run is prefill else []), generator=g2,
                      decoder=decoder)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32, only summation order differs
        assert torch.equal(p1.kept, p2.kept)
        for a, b in zip(loop, tail):
            assert a.length == b.length
            assert torch.equal(a.pos[: a.length], b.pos[: b.length])
            torch.testing.assert_close(b.k[:, :, : b.length], a.k[:, :, : a.length], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(b.v[:, :, : b.length], a.v[:, :, : a.length], rtol=1e-5, atol=1e-5)
    assert list(decoder.tails) == [(method.layer, 32)]  # both prompts in one bucket: one tail (one capture on a GPU)
    with pytest.raises(ValueError, match="prefill_bucket=-1 must be >= 0"):
        FastDecoder(model, prefill_bucket=-1)


def test_one_shot_fast_decode_captures_no_prefill_tail(ckpt, monkeypatch):
    model, _ = ckpt
    made = []
    monkeypatch.setattr(fast, "PrefillTail", lambda *a, **k: made.append(a) or pytest.fail("a tail for one question"))
    embeds = model.embed(prompt(3, 40))[None]
    generate(model, embeds, 4, video=VideoSpan(4, 4, 8), alpha=0.25, layer=2, decoder=one_shot(model))
    assert made == []


def test_the_eager_decode_keeps_cudnn_attention_out(ckpt, monkeypatch):
    """cuDNN's attention builds a plan per new key count; the eager decode meets a new count at every step."""
    import torch.nn.functional as F
    from minivtp import model as model_py
    model, _ = ckpt
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[2], torch.backends.cuda.cudnn_sdp_enabled()))
        return real(q, k, v, **kw)
    monkeypatch.setattr(model_py.F, "scaled_dot_product_attention", spy)
    generate(model, model.embed(prompt(4, 40))[None], 3, video=VideoSpan(4, 4, 8), alpha=0.25, layer=2,
             decoder=fast.EagerOnGPU(model))
    prefill_calls = [on for rows, on in seen if rows > 1]
    decode_calls = [on for rows, on in seen if rows == 1]
    assert prefill_calls and all(prefill_calls) and len(decode_calls) == 2 * model.cfg.n_layers and not any(decode_calls)


def test_fast_decode_with_unequal_cache_lengths_equals_eager(ckpt):
    model, _ = ckpt
    embeds = model.embed(prompt(41, 44))[None]
    for method in (FastV(alpha=0.2, layer=2), LookM(recent=0.1, important=0.1)):
        eager = generate(model, embeds, 8, video=VideoSpan(4, 4, 8), method=method)
        fast = generate(model, embeds, 8, video=VideoSpan(4, 4, 8), method=method, decoder=one_shot(model))
        assert fast.tokens.tolist() == eager.tokens.tolist()
        torch.testing.assert_close(fast.logits, eager.logits, rtol=1e-5, atol=1e-5)


# ---- on a GPU: the graphs captured and replayed ------------------------------------------------------------------


def check_kernels_bf16(device):
    """In bf16, against model.py's functions: the residual add and RoPE bit for bit (each product and sum rounded
    where torch rounds), k and v in the slot start + step and nowhere else, the step's mask as causal_mask's;
    RMSNorm and SwiGLU within one bf16 step (2^-7 relative: a float32 sum in another order, another exp) in under
    1% of the elements. On CUDA (TestOnGPU) and in Triton's interpreter on a CPU."""
    from minivtp.fast import triton_kernels as K
    from minivtp.model import apply_rope, causal_mask, rms_norm, swiglu
    torch.manual_seed(3)
    bf = dict(device=device, dtype=torch.bfloat16)

    def within_one_step(got, want):
        diff = (got.float() - want.float()).abs()
        assert (diff <= want.float().abs() * 2**-7 + 1e-30).all(), diff.max()
        assert (diff > 0).float().mean() < 0.01

    x, r, w = (torch.randn(1, 1, 4096, **bf) * 3), (torch.randn(1, 1, 4096, **bf) * 3), torch.randn(4096, **bf)
    h, y = K.add_rms_norm(x, r, w, 1e-5)
    assert torch.equal(h, x + r)
    within_one_step(y, rms_norm(x + r, w, 1e-5))
    h, y = K.add_rms_norm(x, None, w, 1e-6)
    assert h is x
    within_one_step(y, rms_norm(x, w, 1e-6))
    small = x * 1e-3  # where eps counts: mean of squares about 1e-5
    within_one_step(K.add_rms_norm(small, None, w, 1e-5)[1], rms_norm(small, w, 1e-5))
    H, Hkv, D, slots = 8, 2, 128, 1100  # more slots than the mask's block of 1,024
    qkv = torch.randn(1, 1, (H + 2 * Hkv) * D, **bf) * 2
    cos, sin = torch.rand(1, D, **bf) * 2 - 1, torch.rand(1, D, **bf) * 2 - 1
    cache = StaticKVCache(1, Hkv, slots, D, torch.bfloat16, device)
    cache.start.fill_(1035)
    cache.step.fill_(2)
    q, mask = K.rope_to_cache(qkv, cos, sin, cache, torch.tensor([9], device=device), H, Hkv, D)
    qs, ks, vs = qkv.split([H * D, Hkv * D, Hkv * D], dim=-1)
    heads = lambda t, n: t.view(1, 1, n, D).transpose(1, 2)  # noqa: E731
    assert torch.equal(q, apply_rope(heads(qs, H), cos, sin))
    assert torch.equal(cache.k[:, :, 1037:1038], apply_rope(heads(ks, Hkv), cos, sin))
    assert torch.equal(cache.v[:, :, 1037:1038], heads(vs, Hkv))
    others = [i for i in range(slots) if i != 1037]
    assert not cache.k[:, :, others].any() and not cache.v[:, :, others].any()
    assert cache.pos[1037].item() == 9 and (cache.pos[others] == EMPTY).all()
    cache.pos[:3] = torch.tensor([0, 4, 12])  # earlier rows, one of them after position 9,
    cache.pos[1030:1033] = torch.tensor([1, 12, 3])  # and some in the mask's second block
    q, mask = K.rope_to_cache(qkv, cos, sin, cache, torch.tensor([9], device=device), H, Hkv, D)
    want = torch.zeros(1, slots, **bf).masked_fill(~causal_mask(torch.tensor([9], device=device), cache.pos),
                                                   float("-inf"))
    assert torch.equal(mask, want) and mask[0, :3].isfinite().tolist() == [True, True, False]
    assert mask[0, 1030:1038].isfinite().tolist() == [True, False, True, False, False, False, False, True]
    with pytest.raises(ValueError, match="takes one row"):
        K.swiglu(torch.randn(1, 3, 64, **bf))
    with pytest.raises(ValueError, match="takes contiguous tensors"):
        K.add_rms_norm(torch.randn(1, 1, 128, **bf)[..., ::2], None, w[:64], 1e-5)
    gu = torch.randn(1, 1, 2 * 11008, **bf) * 3
    within_one_step(K.swiglu(gu), swiglu(gu[..., :11008], gu[..., 11008:]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU; on a CPU the tests above check the logic")
class TestOnGPU:
    """In float32 on CUDA, the fast path as eval and answer run it gives the eager path's tokens, its logits to
    1e-4 (TF32 is off in float32 by default; the graphs and compiled kernels only sum in another order)."""

    SETTINGS = [Method(alpha=0.25, layer=1), Method(alpha=0.25, layer=3), FastV(alpha=0.3, layer=2),
                LookM(recent=0.1, important=0.1), Method(alpha=1.0, layer=2)]

    @pytest.fixture(scope="class")
    def gpu_model(self, ckpt):
        import copy
        return copy.deepcopy(ckpt[0]).cuda()

    def questions(self, model):
        for seed, n in ((61, 40), (62, 57), (63, 45)):
            yield model.embed(prompt(seed, n).cuda())[None]

    def check(self, model, fast_model, decoder, method):
        for embeds in self.questions(model):
            eager = generate(model, embeds, 12, video=VideoSpan(4, 4, 8), method=method)
            got = generate(fast_model, embeds, 12, video=VideoSpan(4, 4, 8), method=method, decoder=decoder)
            assert got.tokens.tolist() == eager.tokens.tolist(), method
            torch.testing.assert_close(got.logits, eager.logits, rtol=1e-4, atol=1e-4)

    @pytest.mark.parametrize("method", SETTINGS, ids=str)
    def test_graphs_replay_the_eager_tokens(self, gpu_model, method):
        decoder = FastDecoder(gpu_model, bucket=16, prefill_bucket=8)  # eval --no-compile
        self.check(gpu_model, gpu_model, decoder, method)
        assert all(g.graph is not None for g in decoder.graphs.values())  # really captured
        assert all(t.graph is not None for t in decoder.tails.values())

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    @pytest.mark.parametrize("no_compile", [False, True], ids=["answer", "answer --no-compile"])
    def test_one_shot_as_answer_runs_it(self, gpu_model, no_compile):
        import copy
        from argparse import Namespace
        from minivtp.cli import decode_step
        fused = copy.deepcopy(gpu_model)
        args = Namespace(device="cuda", eager=False, no_compile=no_compile, decode=None)
        decoder = fast.decoder_for(fused, decode_step(args, "triton"))  # as answer makes it, fusing the products
        assert decoder.step == ("plain" if no_compile else "triton")
        assert decoder.bucket == 1 and decoder.prefill_bucket == 0
        assert all(isinstance(layer.mlp, fast.FusedMLP) for layer in fused.layers)
        for method in self.SETTINGS:
            self.check(gpu_model, fused, decoder, method)

    def test_triton_kernels_round_as_the_readable_code_in_bf16(self):
        check_kernels_bf16("cuda")

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    def test_eval_s_compiled_path(self, gpu_model):
        import copy
        prepared = fast.prepare(copy.deepcopy(gpu_model))
        decoder = FastDecoder(prepared, bucket=16, prefill_bucket=8, step="tuned")
        for method in self.SETTINGS[:3]:
            self.check(gpu_model, prepared, decoder, method)


# ----------------------------------------------------------------------------------------------------------------
# fast.triton_step: three Triton kernels in the decode step. On a CPU they run in Triton's interpreter, in a process
# of its own (TRITON_INTERPRET must be set before the kernels are defined, and must not leak into the GPU tests).

TRITON_ON_CPU = r"""
import os, sys, torch
os.environ["TRITON_INTERPRET"] = "1"
from minivtp import fast, model as M
torch.manual_seed(int(sys.argv[1]))
n_heads, n_kv, bias = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
cfg = M.Config(vocab_size=61, dim=16 * n_heads, n_layers=3, n_heads=n_heads, n_kv_heads=n_kv, hidden_dim=72,
               qkv_bias=bias, mlp_bias=bias, fused_attention=sys.argv[5] == "1")
m = M.Transformer(cfg).eval()
for p in m.parameters():  # biases start at zero: make them count
    torch.nn.init.normal_(p, std=0.3)
fast.prepare(m, compile=False)
n = 13 + int(sys.argv[1]) % 7
caches = m.new_caches(1, n)
with torch.no_grad():
    token = m.forward_embeds(m.embed(torch.randint(0, 61, (1, n))), None, caches)[0, -1].argmax()
plain = [fast.StaticKVCache.from_cache(c, n + 9) for c in caches]
fused = [fast.StaticKVCache.from_cache(c, n + 9) for c in caches]
worst = 0.0
for step in range(6):
    pos = torch.tensor([n + step])
    for c in plain + fused:
        c.step = torch.tensor([step])
    want, got = fast.static_step(m, token, pos, plain), fast.triton_step(m, token, pos, fused)
    worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
    for a, b in zip(plain, fused):  # every slot: the rows written where the step says, nothing else touched
        assert torch.equal(a.pos, b.pos), (a.pos, b.pos)
        torch.testing.assert_close(b.k, a.k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.v, a.v, rtol=1e-5, atol=1e-5)
    token = want.argmax()
print(worst)
"""


@pytest.mark.parametrize("seed,n_heads,n_kv,bias,fused", [(0, 4, 2, 0, 1), (1, 4, 4, 1, 1), (2, 2, 1, 1, 0)])
def test_triton_step_is_the_static_step_in_triton_s_interpreter(tmp_path, seed, n_heads, n_kv, bias, fused):
    """float32, Triton's interpreter on the CPU: the three kernels' step gives the plain step's logits and writes
    the same cache rows and positions, step after step, with grouped-query heads, biases and both attentions.
    Only float32: the interpreter rounds float32 to bfloat16 by truncation (tried: every element equal to the
    truncated sum, 28% unequal to the rounded one), where a GPU rounds to nearest; bf16 is checked on CUDA."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    script = tmp_path / "triton_on_cpu.py"
    script.write_text(TRITON_ON_CPU)
    p = subprocess.run([sys.executable, str(script), str(seed), str(n_heads), str(n_kv), str(bias), str(fused)],
                       capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-3000:]
    assert float(p.stdout.split()[-1]) < 1e-5


ROUND_ON_CPU = r"""
import os, torch
os.environ["TRITON_INTERPRET"] = "1"
import triton, triton.language as tl
from minivtp.fast.triton_kernels import _round

@triton.jit
def rounded(X, Y, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(Y + i, _round(tl.load(X + i, mask=i < n), tl.bfloat16), mask=i < n)

torch.manual_seed(0)
x = torch.cat([torch.randn(4000) * 10 ** torch.randint(-8, 8, (4000,)).float(),
               torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20, 0.0, -0.0, 65504.0]),
               torch.tensor([float("inf"), -float("inf")])])
nans = torch.tensor([0x7FFFFFFF, -1, 0x7F800001], dtype=torch.int32).view(torch.float32)  # NaNs a GPU may make
y = torch.empty_like(x)
rounded[(1,)](x, y, x.numel(), BLOCK=8192)
exact = y.view(torch.int32) == x.bfloat16().float().view(torch.int32)
z = torch.empty_like(nans)
rounded[(1,)](nans, z, nans.numel(), BLOCK=8192)
print(int(exact.sum()) + int(z.isnan().sum()), x.numel() + nans.numel())
"""


def test_triton_s_bf16_rounding_is_torch_s(tmp_path):
    """triton_kernels._round rounds float32 to bfloat16 on the bits: to nearest, ties to even, as torch's
    .bfloat16() does, for random magnitudes from 1e-8 to 1e8, exact ties either way, both zeros."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    script = tmp_path / "round_on_cpu.py"
    script.write_text(ROUND_ON_CPU)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0, p.stderr[-3000:]
    same, n = map(int, p.stdout.split()[-2:])
    assert same == n == 4012


def test_rope_kernel_rounds_each_product_when_compiled_for_a_gpu():
    """The bug this guards against: RoPE's x*cos and rotate_half(x)*sin, each rounded to bf16 by torch before they
    are summed, written as x.to(bf16).to(float32) in Triton, compiled to two fused multiply-adds (the round
    trips folded away: one bf16 step off torch on an H200). Compiled here for an sm_90 target (no GPU needed),
    the kernel's PTX has no FMA left, in bfloat16, float16 and float32 alike (the kernels launch with Triton's
    fused multiply-adds off, triton_kernels.EXACT); the other two kernels compile for it as well."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from minivtp.fast import triton_kernels as K
    target = GPUTarget("cuda", 90, 32)
    for dt in ("bf16", "fp16", "fp32"):
        sig = {"QKV": f"*{dt}", "COS": f"*{dt}", "SIN": f"*{dt}", "Q": f"*{dt}", "K": f"*{dt}", "V": f"*{dt}",
               "P": "*i64", "MASK": f"*{dt}", "START": "*i64", "STEP": "*i64", "POS": "*i64", "n_heads": "i32",
               "n_kv": "i32", "slots": "i32", "HALF": "constexpr", "D": "constexpr", "BLOCK_S": "constexpr"}
        try:
            kernel = triton.compile(ASTSource(fn=K._rope_to_cache, signature=sig,
                                              constexprs={"HALF": 64, "D": 128, "BLOCK_S": 1024}),
                                    target=target, options=K.EXACT)
        except Exception as e:  # a Triton without its CUDA backend's tools
            pytest.skip(f"Triton cannot compile for sm_90 here: {e!r}"[:300])
        ptx = kernel.asm["ptx"]
        assert "mul.rn.f" in ptx or "mul.f" in ptx, dt  # the products are there ...
        assert "fma." not in ptx, dt  # ... and none is fused with the sum
    # and the other two kernels compile for that GPU too
    for has_r in (True, False):
        sig = {"X": "*bf16", "R": "*bf16", "H": "*bf16", "W": "*bf16", "Y": "*bf16", "C": "i32", "eps": "fp32",
               "HAS_R": "constexpr", "BLOCK": "constexpr"}
        assert triton.compile(ASTSource(fn=K._add_rms_norm, signature=sig,
                                        constexprs={"HAS_R": has_r, "BLOCK": 4096}), target=target,
                              options=K.EXACT).asm["ptx"]
    sig = {"GU": "*bf16", "OUT": "*bf16", "F": "i32", "BLOCK": "constexpr"}
    assert triton.compile(ASTSource(fn=K._swiglu, signature=sig, constexprs={"BLOCK": 1024}), target=target,
                          options=K.EXACT).asm["ptx"]


def test_triton_kernels_round_as_the_readable_code_in_bf16_in_the_interpreter():
    """check_kernels_bf16 on the CPU, in Triton's interpreter (a process of its own): what TestOnGPU checks on CUDA."""
    pytest.importorskip("triton")
    import subprocess
    import sys
    tests = Path(__file__).resolve().parent
    code = ("import os, sys; os.environ['TRITON_INTERPRET'] = '1'; sys.path.insert(0, sys.argv[1]); "
            "from test_fast import check_kernels_bf16; check_kernels_bf16('cpu'); print('ok')")
    p = subprocess.run([sys.executable, "-c", code, str(tests)], capture_output=True, text=True, timeout=300,
                       cwd=tests.parent)
    assert p.returncode == 0 and p.stdout.split()[-1] == "ok", p.stderr[-3000:]


def test_fast_decoder_with_triton_says_what_it_needs(ckpt):
    import copy
    model, _ = ckpt
    with pytest.raises(ValueError, match="step='fused' must be one of 'plain', 'tuned', 'triton'"):
        FastDecoder(model, step="fused")
    with pytest.raises(ValueError, match=r"needs fused products: fast.prepare\(model, compile=False\)"):
        FastDecoder(model, step="triton")
    with pytest.raises(ValueError, match="decodes with CUDA kernels; the model is on cpu"):
        FastDecoder(fast.prepare(copy.deepcopy(model), compile=False), step="triton")
    from minivtp import model as model_py
    odd = fast.prepare(model_py.Transformer(model_py.Config(vocab_size=20, dim=48, n_layers=1, n_heads=2,
                                                            n_kv_heads=2, hidden_dim=64)), compile=False)  # head_dim 24
    assert not fast.triton_fits(odd) and fast.triton_fits(model)
    with pytest.raises(ValueError, match="power-of-two head_dim, this model's is 24 .*--decode plain"):
        FastDecoder(odd, step="triton")
