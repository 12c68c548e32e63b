"""Many questions at once (minivtp/fast/batch.py) against the paper's path one question at a time (generate.generate):
the same tokens, kept sets, cache rows and stopping, the logits at float32's tolerance.

The oracle is generate.generate on each prompt alone. Prompts here differ in length, in where the video sits and in
its frame count, so every question keeps a different number of rows and the batch's caches are padded. The tiny
model is written by transformers (save_pretrained) and loaded by weights.load, as the other fast-path tests do."""

import pytest
import torch
from conftest import prompt, write_llama

import weights
from minivtp.fast.batch import BatchDecoder, BatchKVCache, Question, generate_many
from minivtp.generate import Method, generate
from minivtp.rivals import FastV, LookM
from minivtp.model import EMPTY, KVCache
from minivtp.vtp import VideoSpan

# float32 on a CPU: the batched step multiplies B rows in one matmul and reads padded caches with the padding masked,
# so sums may run in another order than for one row. Logits here reach ~10 and pass 4 layers of products; 1e-5
# was missed once by 1.2e-5 (the manual attention, 'released' variant). 1e-4 is still far below an argmax gap, and
# the tokens are compared exactly.
TOL = dict(rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch_llama")
    write_llama(path, seed=7, num_hidden_layers=4, num_key_value_heads=2)  # grouped-query attention: 6 heads, 2 kv
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return weights.load(checkpoint)


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "manual"])
def either(request, checkpoint):
    """The model with SDPA's kernel (fused) or the attention written out (manual): the mask reaches both."""
    m = weights.load(checkpoint)
    m.cfg.fused_attention = request.param
    for layer in m.layers:
        layer.attn.fused = request.param
    return m


def questions(model, seed=0):
    """Five prompts: different prefixes, frame counts (2..5), tokens per frame and question lengths."""
    shapes = [(3, 4, 8, 5), (6, 2, 8, 9), (1, 5, 6, 3), (4, 3, 8, 12), (2, 4, 4, 7)]  # prefix, T, Nv, question rows
    out = []
    for i, (prefix, T, Nv, nq) in enumerate(shapes):
        N = prefix + T * Nv + nq
        embeds = model.embed(prompt(seed + i, N))[None]  # (1, N, C)
        out.append(Question(embeds, VideoSpan(prefix, T, Nv), max_new_tokens=6 + i))
    return out


def alone(model, p: Question, method, **kw):
    return generate(model, p.embeds, p.max_new_tokens, video=p.video, method=method, eos_id=p.eos_id, **kw)


def assert_same(got, want):
    assert got.tokens.tolist() == want.tokens.tolist()
    torch.testing.assert_close(got.logits, want.logits, **TOL)
    assert got.kept.tolist() == want.kept.tolist()
    assert (got.cache_len, got.cache_lens, got.prompt_len) == (want.cache_len, want.cache_lens, want.prompt_len)


@pytest.mark.parametrize("method", [
    Method(alpha=0.25, layer=2), Method(alpha=0.5, layer=1, head_pool="mean"), Method(alpha=1.0, layer=3),
    Method(alpha=0.3, layer=4, variant="released"), FastV(alpha=0.3, layer=2),
    Method("random", alpha=0.3, layer=2), LookM(recent=0.2, important=0.2)], ids=str)
def test_a_batch_answers_as_each_question_alone(either, method):
    ps = questions(either)
    got = generate_many(either, ps, method)
    for g, p in zip(got, ps):
        assert_same(g, alone(either, p, method))


def test_without_a_video_nothing_is_pruned_as_alone(model):
    ps = [Question(p.embeds, None, p.max_new_tokens) for p in questions(model, seed=3)]
    for g, p in zip(generate_many(model, ps), ps):
        assert_same(g, alone(model, p, None))


def test_each_question_stops_at_its_own_eos(model):
    """The eos of each question is a token it generates in the middle of its answer alone: it stops there, the
    others go on, and the batch keeps decoding until the last is done."""
    method = Method(alpha=0.25, layer=2)
    ps = questions(model, seed=11)
    free = [alone(model, p, method).tokens.tolist() for p in ps]
    for p, toks in zip(ps, free):
        p.eos_id = toks[2]  # stops at its third token (or earlier, where that token came before)
    ps[1].eos_id = None  # one question with no eos: it runs to its max_new_tokens
    got = generate_many(model, ps, method)
    for g, p, toks in zip(got, ps, free):
        want = alone(model, p, method)
        assert_same(g, want)
        assert len(g.tokens) == (toks.index(p.eos_id) + 1 if p.eos_id is not None else p.max_new_tokens)
    assert len(got[1].tokens) == ps[1].max_new_tokens and len(got[0].tokens) <= 3


def test_sampling_draws_as_alone(model):
    ps = questions(model, seed=5)[:3]
    method = Method(alpha=0.5, layer=2)
    for g, p in zip(generate_many(model, ps, method, temperature=0.9, seed=4), ps):
        assert_same(g, alone(model, p, method, temperature=0.9, seed=4))


def test_a_decoder_serves_batch_after_batch(model):
    """One BatchDecoder for several batches of different sizes and rows (eval's use): each as alone."""
    method = Method(alpha=0.25, layer=2)
    ps = questions(model, seed=21) + questions(model, seed=40)
    dec = BatchDecoder(model, bucket=16)
    for chunk in (ps[:4], ps[4:8], ps[8:], ps[:4]):
        for g, p in zip(generate_many(model, chunk, method, batch_decoder=dec), chunk):
            assert_same(g, alone(model, p, method))
    assert set(dec.graphs) == {4, 2}  # one step per batch size, the last cache sizes it met


def test_the_batch_cache_writes_each_question_after_its_own_rows():
    caches = []
    for n in (3, 5):
        c = KVCache(1, 2, 8, 4)
        c.append(torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4), torch.arange(10, 10 + n))
        c.keep(torch.arange(0, n, 2))  # pruned: rows 0, 2, (4) at positions 10, 12, (14)
        caches.append(c)
    batch = BatchKVCache(2, 2, 6, 4).load(caches)
    assert batch.start.tolist() == [2, 3]
    batch.step.fill_(1)  # the second new token: slot start + 1
    k = torch.randn(2, 2, 1, 4)
    _, _, pos = batch.append(k, k, torch.tensor([21, 31]))
    assert pos.tolist() == [[10, 12, EMPTY, 21, EMPTY, EMPTY], [10, 12, 14, EMPTY, 31, EMPTY]]
    torch.testing.assert_close(batch.k[0, :, 3], k[0, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(batch.k[1, :, 4], k[1, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(batch.k[1, :, :3], caches[1].k[0, :, :3], rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot fit a cache holding 3 rows into 2 slots"):
        BatchKVCache(2, 2, 2, 4).load(caches)


def test_bad_prompts_get_generate_s_messages(model):
    method = Method(alpha=0.25, layer=2)
    p = questions(model)[0]
    for bad in (Question(p.embeds, VideoSpan(3, 4, 8), 0), Question(p.embeds, VideoSpan(3, 9, 8), 2),
                Question(p.embeds[0], p.video, 2), Question(p.embeds, p.video, model.cfg.max_seq_len)):
        with pytest.raises(ValueError) as alone_error:
            alone(model, bad, method)
        with pytest.raises(ValueError) as batch_error:
            generate_many(model, [p, bad], method)
        assert str(batch_error.value) == str(alone_error.value)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA graphs need a GPU; on a CPU the tests above check the logic")
class TestOnGPU:
    """In float32 on CUDA (TF32 off by default), the batch's captured step and eval's prefill (fast.prepare's fused
    model, a FastDecoder's graph tails) give each question's tokens alone on the readable path, logits to 1e-4."""

    @pytest.fixture(scope="class")
    def gpu_models(self, model):
        import copy

        from minivtp import fast
        plain = copy.deepcopy(model).cuda()
        return plain, fast.prepare(copy.deepcopy(plain), compile=False)

    @pytest.mark.filterwarnings("ignore::DeprecationWarning")
    @pytest.mark.parametrize("compile", [False, True], ids=["graphs", "compiled"])
    @pytest.mark.parametrize("method", [Method(alpha=0.25, layer=2), FastV(alpha=0.3, layer=2),
                                        Method(alpha=1.0, layer=3)], ids=str)
    def test_the_captured_step_gives_each_answer_alone(self, model, gpu_models, method, compile):
        from minivtp.fast import FastDecoder
        plain, fused = gpu_models
        ps = [Question(p.embeds.cuda(), p.video, p.max_new_tokens) for p in questions(model, seed=9)]  # (CPU embeds)
        dec = BatchDecoder(fused, bucket=16, compile=compile)
        for chunk in (ps, ps[:3], ps):  # a second batch of the first size reuses its graph
            got = generate_many(fused, chunk, method, decoder=FastDecoder(fused, bucket=16, prefill_bucket=8),
                                batch_decoder=dec)
            for g, p in zip(got, chunk):
                want = alone(plain, p, method)
                assert g.tokens.tolist() == want.tokens.tolist()
                torch.testing.assert_close(g.logits, want.logits, rtol=1e-4, atol=1e-4)
        assert all(graph.graph is not None for graph in dec.graphs.values())  # really captured
