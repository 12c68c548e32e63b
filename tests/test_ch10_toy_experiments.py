"""Chapter 10: the toy experiments."""

from tutorial import run_chapter


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(10)
    measure, method_for, model, samples = ns["measure"], ns["method_for"], ns["model"], ns["samples"]
    full = measure(model, samples)[0]
    ours = measure(model, samples, method_for("llm-vtp", 0.1, 1))
    rand = measure(model, samples, method_for("random", 0.1, 1), seed=1)
    comp = measure(model, samples, method_for("complement", 0.1, 1))
    # what the chapter's words claim, beyond its printed numbers
    assert ours[1] > 0.9 > 0.3 > rand[1] and ours[0] >= full - 0.05
    assert rand[0] < 0.5 and comp[0] <= rand[0] + 0.05
