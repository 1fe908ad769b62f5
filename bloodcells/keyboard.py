"""Keyboard review: one key per cell type, as in manual differential counters (cellcounter).

The default layout puts the differential's types on the digits in the clinical order (1 blasts ...
0 lymphocytes) and the rest on letters named after them; a user may replace it with lines of
``KEY: CODE``. The arrow keys move between cells and Backspace undoes the last change.
"""

from __future__ import annotations

from collections.abc import Sequence

from .taxonomy import Tree, default_tree

DEFAULT_LAYOUT: tuple[tuple[str, str], ...] = (
    ("1", "BLA"), ("2", "PMO"), ("3", "MYB"), ("4", "MMZ"), ("5", "NGB"), ("6", "NGS"), ("7", "EOS"),
    ("8", "BAS"), ("9", "MON"), ("0", "LYT"), ("N", "NEU"), ("P", "PLM"), ("E", "EBO"), ("L", "LYI"),
    ("T", "PLT"), ("S", "KSC"), ("A", "ART"), ("O", "OTH"), ("U", "NIF"),
)
PREVIOUS, NEXT, UNDO = "Left", "Right", "Backspace"  # Streamlit shortcut names of ←, → and ⌫
# the view's first and last cell: walking back 45 cells with ← took 17 s (a page run a step)
FIRST, LAST = "Home", "End"
# Streamlit keeps C (clear cache) and R (rerun) for itself, with or without modifiers
RESERVED = {"C": "Streamlit clears its cache with it", "R": "Streamlit reruns the page with it"}


class KeyLayoutError(ValueError):
    """A key layout that cannot be used; the message names each wrong line."""


def parse_layout(text: str, tree: Tree | None = None) -> dict[str, str]:
    """``{KEY: code}`` from lines of ``KEY: CODE`` (``#`` starts a comment; keys are one letter or
    digit, case does not matter). Every problem is reported at once, by line."""
    tree = tree or default_tree()
    layout: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, colon, code = (part.strip() for part in line.partition(":"))
        key, code = key.upper(), code.upper()
        if not colon or not key or not code:
            problems.append(f"line {number}: write KEY: CODE (e.g. 1: BLA), not {line!r}")
        elif len(key) != 1 or not key.isascii() or not key.isalnum():
            problems.append(f"line {number}: key {key!r} is not one letter or digit")
        elif key in RESERVED:
            problems.append(f"line {number}: key {key} cannot be used ({RESERVED[key]})")
        elif key in layout:
            problems.append(f"line {number}: key {key} is already {layout[key]} (line {first_line[key]})")
        elif code not in tree:
            problems.append(f"line {number}: {code} is not a cell type of tree {tree.name!r}")
        else:
            layout[key], first_line[key] = code, number
    if not layout and not problems:
        problems.append("the layout is empty: give at least one KEY: CODE line")
    if problems:
        raise KeyLayoutError("; ".join(problems))
    return layout


def layout_text(layout: dict[str, str], tree: Tree | None = None) -> str:
    """The editable text of a layout, each line with the type's name as a comment."""
    tree = tree or default_tree()
    return "\n".join(f"{key}: {code}  # {tree[code].title}" for key, code in layout.items())


def default_layout() -> dict[str, str]:
    return dict(DEFAULT_LAYOUT)


def current_position(order: Sequence[int], shown: Sequence[int], remembered: int | None) -> int:
    """Where the cursor is in ``shown`` (cell ids, a subsequence of ``order``): on the remembered
    cell while it is shown, else on the first shown cell after it (a filter such as "not reviewed
    yet" drops the cell just reviewed), else, the end reached, on the first one: on the last, each key
    moved the cursor one cell back ("47 of 47", "46 of 46"...), the cells left walked backwards."""
    if not shown:
        raise ValueError("no cell is shown")
    if remembered in shown:
        return shown.index(remembered)
    if remembered not in order:
        return 0
    rank = {cell: n for n, cell in enumerate(order)}
    after = [n for n, cell in enumerate(shown) if rank[cell] > rank[remembered]]
    return after[0] if after else 0
