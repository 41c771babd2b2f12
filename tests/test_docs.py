"""The README's generated parts are current: its table of ``blitz train``'s options is made
from the parser, which is made from the settings' own declarations (``config.option``).
``python tests/test_docs.py`` writes the table afresh."""

from pathlib import Path

from blitz.cli import options_table

README = Path(__file__).resolve().parents[1] / "README.md"
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


def test_every_setting_with_a_flag_is_an_option_of_train_and_a_keyword_of_the_api():
    from blitz.api import KEYWORDS
    from blitz.cli import build_parser
    from blitz.config.settings import TRAIN_FLAGS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for key, flag in TRAIN_FLAGS.items():
        action = train._option_string_actions[flag.flag]
        assert action.help == flag.help and KEYWORDS[action.dest] == key


if __name__ == "__main__":
    head, _, tail = _split(README.read_text(encoding="utf-8"))
    README.write_text(head + START + options_table() + END + tail, encoding="utf-8")
    print(f"wrote the options table into {README}")
