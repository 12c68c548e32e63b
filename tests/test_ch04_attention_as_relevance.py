"""Chapter 04: the question's attention as a relevance signal, on the toy video LLM."""

import torch
from tutorial import run_chapter

from minivtp.lab import toy
from minivtp.vtp import layer_attention


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(4)
    assert ns["named"] >= ns["every"] >= 190  # of 200: the named object is one the question looked at
    first = ns["look"](0)[1]
    s0 = toy.make_sample(torch.Generator().manual_seed(0))
    assert all(int((first[o.frame] > first[o.frame, o.cell]).sum()) == 0 for o in s0.objects)


def test_layer_attention_rows_are_distributions_over_the_cached_keys():
    model = toy.load()
    sample = toy.make_sample(torch.Generator().manual_seed(0))
    embeds, _ = model.prompt(sample.features[None], [sample.question])
    llm = model.llm
    N = embeds.shape[1]
    pos = torch.arange(N)
    cos, sin = llm.rope(pos)
    cache = llm.new_caches(1, N)[0]
    with torch.no_grad():
        llm.layers[0](embeds, cos, sin, pos, cache)
        A = layer_attention(llm.layers[0], embeds, cos, sin, pos, cache, torch.tensor([N - 1]))
    assert A.shape == (llm.cfg.n_heads, 1, N)
    torch.testing.assert_close(A.sum(-1), torch.ones(llm.cfg.n_heads, 1))
