"""The generated parts are current: the README's table of ``blitz train``'s options is made
from the parser, which is made from the settings' own declarations (``config.option``), and the
facts ``blitz models`` prints from the registry. ``python tests/test_docs.py`` writes both
afresh."""

import re
from pathlib import Path

import pytest

from blitz.cli import options_table
from blitz.cli.models import FACTS, facts_json

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MODEL_FACTS = ROOT / "src" / "blitz" / "cli" / FACTS
START = "<!-- options-table: made by python tests/test_docs.py from blitz train's parser -->\n"
END = "<!-- /options-table -->"


def _split(text: str) -> tuple[str, str, str]:
    head, _, rest = text.partition(START)
    table, _, tail = rest.partition(END)
    return head, table, tail


def test_the_readme_lists_every_option_as_declared():
    head, table, tail = _split(README.read_text(encoding="utf-8"))
    assert head and tail, f"{README} lost its options table's markers"
    stale = "the README's options table is stale: run python tests/test_docs.py"
    assert table == options_table(), stale


def test_the_stored_model_facts_are_the_registrys():
    stale = f"{MODEL_FACTS} is stale (blitz models prints it): run python tests/test_docs.py"
    assert MODEL_FACTS.read_text(encoding="utf-8") == facts_json(), stale


def test_every_setting_with_a_flag_is_an_option_of_train_and_a_keyword_of_the_api():
    from blitz.api import KEYWORDS
    from blitz.cli import build_parser
    from blitz.config.settings import TRAIN_FLAGS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for key, flag in TRAIN_FLAGS.items():
        action = train._option_string_actions[flag.flag]
        assert action.help == flag.help and KEYWORDS[action.dest] == key


def test_the_readme_stays_a_door_of_at_most_350_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 350


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md", "docs/guide.md"])
def test_every_link_to_a_file_or_section_of_ours_resolves(doc):
    source = ROOT / doc
    for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", source.read_text()):
        path = (source.parent / target).resolve() if target else source
        assert path.exists(), f"{doc} links to {target}, which is not there"
        if anchor and path.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", path.read_text(), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{doc}: no #{anchor} in {target}"


if __name__ == "__main__":
    head, _, tail = _split(README.read_text(encoding="utf-8"))
    README.write_text(head + START + options_table() + END + tail, encoding="utf-8")
    print(f"wrote the options table into {README}")
    MODEL_FACTS.write_text(facts_json(), encoding="utf-8")
    print(f"wrote the models' facts into {MODEL_FACTS}")
