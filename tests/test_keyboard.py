"""The keyboard review's key layout and cursor (bloodcells.keyboard)."""

import pytest

from bloodcells.keyboard import (
    DEFAULT_LAYOUT,
    KeyLayoutError,
    current_position,
    default_layout,
    layout_text,
    parse_layout,
)


def test_the_default_layout_puts_the_differential_on_the_digits_in_clinical_order(tree):
    layout = default_layout()
    assert [layout[digit] for digit in "1234567890"] == ["BLA", "PMO", "MYB", "MMZ", "NGB", "NGS", "EOS", "BAS",
                                                         "MON", "LYT"]
    assert layout["U"] == "NIF" and len(layout) == len(DEFAULT_LAYOUT)  # unidentified; no key twice
    assert not {"C", "R"} & set(layout) and all(code in tree for code in layout.values())
    assert parse_layout(layout_text(layout, tree), tree) == layout  # the text shown reads back the same


def test_a_layout_is_read_from_key_code_lines_in_any_case(tree):
    assert parse_layout("# my keys\nq: lyt\n\nW : NGS  # segmented\n", tree) == {"Q": "LYT", "W": "NGS"}


@pytest.mark.parametrize(("text", "problem"), [
    ("1: BLA\n1: NGS", "line 2: key 1 is already BLA (line 1)"),
    ("1: ZZZ", "line 1: ZZZ is not a cell type of tree 'default'"),
    ("C: LYT", "line 1: key C cannot be used (Streamlit clears its cache with it)"),
    ("r: LYT", "key R cannot be used"),
    ("F1: LYT", "line 1: key 'F1' is not one letter or digit"),
    (";: LYT", "key ';' is not one letter or digit"),
    ("1 BLA", "line 1: write KEY: CODE (e.g. 1: BLA), not '1 BLA'"),
    ("# nothing", "the layout is empty"),
])
def test_a_wrong_layout_names_the_line_and_the_problem(tree, text, problem):
    with pytest.raises(KeyLayoutError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_layout(text, tree)


def test_every_problem_is_reported_at_once(tree):
    with pytest.raises(KeyLayoutError) as raised:
        parse_layout("1: BLA\n1: NGS\n2: XYZ", tree)
    assert "line 2" in str(raised.value) and "line 3" in str(raised.value)


def test_the_cursor_stays_on_its_cell_or_moves_to_the_next_shown_one():
    order = [10, 11, 12, 13, 14]
    assert current_position(order, [11, 12, 14], 12) == 1  # still shown
    assert current_position(order, [11, 14], 12) == 1  # reviewed and filtered out: the next one (14)
    assert current_position(order, [10, 11], 13) == 0  # none after it: back to the first (it walked backwards)
    assert current_position(order, [11, 12], None) == 0  # first visit
    assert current_position(order, [11, 12], 99) == 0  # a cell of another analysis
    with pytest.raises(ValueError, match="no cell"):
        current_position(order, [], 12)
