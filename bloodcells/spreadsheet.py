"""CSV files that a lab opens in a spreadsheet.

Every one is UTF-8 with a byte-order mark: without it Excel reads the file in the system's code
page and garbles accented, Hebrew or emoji file names. A text cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is a formula to Excel and LibreOffice, run when the file is
opened ("CSV injection", OWASP): a file name inside an uploaded zip (``=HYPERLINK("http://...")``),
an analysis or reviewer name. Such a text is written with a leading apostrophe, which the
spreadsheet shows as text; a plain decimal number (``-0.5``, ``+1e-3``) is left as it is.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ENCODING = "utf-8-sig"
_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def as_text(value: Any) -> Any:
    """``value``, or a text a spreadsheet would run as a formula made plain text."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _DECIMAL.fullmatch(value):
        return "'" + value
    return value


def csv_bytes(header: list[str], rows: Iterable[Iterable[Any]]) -> bytes:
    """The header and the rows as the bytes of a CSV file, every cell safe to open."""
    buffer = io.StringIO()
    # every cell quoted: where the lab's Excel splits on ";" (German, French...), a name holding
    # ";=cmd..." would otherwise start a cell of its own with a formula
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)
    writer.writerow(header)
    writer.writerows([as_text(value) for value in row] for row in rows)
    return buffer.getvalue().encode(ENCODING)


def write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    """``csv_bytes`` written to ``path``."""
    path = Path(path)
    path.write_bytes(csv_bytes(header, rows))
    return path
