"""Chapter 10: the toy experiments."""

from tutorial import run_chapter


def test_chapter_runs_and_prints_what_it_shows():
    ns = run_chapter(10)
    vtp = ns["measure"](ns["model"], ns["samples"], alpha=0.1, layer=1)
    rand = ns["measure"](ns["model"], ns["samples"], alpha=0.1, layer=1, selection="random", seed=1)
    assert vtp[1] > 0.7 > 0.3 > rand[1]  # what the chapter's words claim, beyond its printed numbers
