"""Finding analyses by part of their name the same way on both backends.

MySQL/MariaDB's usual collations (``utf8mb4_general_ci``) ignore case and accents: "muller" finds
"MÜLLER Probe.zip". SQLite's LIKE ignores the case of A-Z only, so there "MÜLLER", "muller" and a
name typed with a combining accent found nothing. SQLite compares the names folded by the same rule
in Python (``fold``, registered on each connection); MySQL keeps its collation, given the folded
text too (it holds it equal).
"""

from __future__ import annotations

import unicodedata

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import String

_SQLITE_FUNCTION = "bloodcells_fold"


def fold(text: str | None) -> str | None:
    """``text`` without accents and in lower case ("MÜLLER" and "Mu\u0308ller" -> "muller")."""
    if text is None:
        return None
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()


class folded(FunctionElement):  # noqa: N801 - used like SQLAlchemy's func.* constructs
    """A column compared as ``fold`` folds it: SQLite calls ``fold``; other backends' collations fold."""
    type = String()
    inherit_cache = True


@compiles(folded)
def _folded_by_collation(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


@compiles(folded, "sqlite")
def _folded_in_python(element, compiler, **kw):
    return f"{_SQLITE_FUNCTION}({compiler.process(element.clauses, **kw)})"


def register_fold(dbapi_connection) -> None:
    """Make ``fold`` callable from SQL on a new SQLite connection."""
    dbapi_connection.create_function(_SQLITE_FUNCTION, 1, fold, deterministic=True)
