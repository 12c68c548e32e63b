"""Every code excerpt the tutorial quotes still matches the source it quotes, by file and name."""

import pytest
import tutorial
from tutorial import ROOT, chapter, quotes, source_of

CHAPTERS = sorted((ROOT / "tutorial").glob("[0-9][0-9]_*.md"))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_quotes_match_the_source(path):
    found = quotes(path)
    for file, name, text in found:
        assert text == source_of(file, name), f"{path.name} quotes {file}: {name}, which has changed"


def test_every_chapter_quotes_something_and_has_a_test():
    assert len(CHAPTERS) == 12
    for path in CHAPTERS:
        assert quotes(path), path.name
        n = path.name[:2]
        assert list((ROOT / "tests").glob(f"test_ch{n}_*.py")), f"no tests/test_ch{n}_*.py"


def test_the_drift_check_notices_a_changed_function(tmp_path, monkeypatch):
    # copy the repository's source, change one quoted function by one character, and look again
    file, name, text = quotes(chapter(5))[0]
    changed = (ROOT / file).read_text().replace(text.splitlines()[-1], text.splitlines()[-1] + "  # edited", 1)
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text(changed)
    monkeypatch.setattr(tutorial, "ROOT", tmp_path)
    assert tutorial.source_of(file, name) != text
