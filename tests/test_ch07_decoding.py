"""Chapter 07: decoding from the pruned cache at the original positions."""

from tutorial import run_chapter

from minivtp.generate import decode_one_token


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(7)
    assert ns["pruned"].cache_len == 16 and ns["pruned"].prompt_len == 40


def test_decode_uses_the_given_position_and_the_next_slot():
    ns = run_chapter(7)
    model, embeds, video = ns["model"], ns["embeds"], ns["video"]
    from minivtp.generate import prefill
    caches = model.new_caches(1, 45)
    logits, _ = prefill(model, embeds, caches, video=video, alpha=0.25, layer=2)
    decode_one_token(model, logits.argmax(), 40, caches)
    assert all(c.length == 17 and c.pos[16].item() == 40 for c in caches)
