"""What reading an input yields and how it fails: an image's bytes, a problem with one file (the rest
of the batch goes on), an error for the whole input, and the limits that bound the reading."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class InputLimits:
    """Bounds against zip bombs and oversized files (see docs/operations.md)."""
    max_members: int = 200_000  # a Matek-sized (171k cells) export still fits
    max_index_bytes: int = 48 * 1024 * 1024  # the zip's central directory, held in memory
    max_file_bytes: int = 256 * 1024 * 1024  # one image, in a zip or on disk
    max_total_bytes: int = 8 * 1024 * 1024 * 1024  # all members of one zip, uncompressed
    max_ratio: float = 200.0  # uncompressed / compressed, per member ...
    ratio_floor_bytes: int = 1024 * 1024  # ... once it is larger than this (tiny members are harmless)


class InputError(ValueError):
    """A whole input that cannot be read (not a zip, empty, missing...)."""


@dataclass(frozen=True)
class InputImage:
    name: str  # path inside the upload, '/'-separated
    content: bytes


@dataclass(frozen=True)
class InputProblem:
    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


STORED_PROBLEMS = 200  # the problems an analysis keeps (an upload of 100,000 unreadable files has as many)


def stored_problems(problems: list[InputProblem]) -> dict:
    """The problems of an upload as its analysis's summary keeps them: the first STORED_PROBLEMS in words
    (``problems``) and how many there were (``problems_total``: 5,000 unreadable files were said as 200)."""
    return {"problems": [str(problem) for problem in problems[:STORED_PROBLEMS]], "problems_total": len(problems)}


def none_readable(label: str, problems: list[InputProblem]) -> InputError:
    """The error for an input none of whose images could be used (unreadable, too small...), naming the
    first few and why ("could not be read" was said of a 64x64 image that was read, and too small)."""
    shown = "; ".join(map(str, problems[:3])) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    images = "its one image" if len(problems) == 1 else f"none of its {len(problems)} images"
    return InputError(f"{label}: {images} could {'not ' if len(problems) == 1 else ''}be used ({shown})")


class RepeatedImages:
    """The images of an upload whose bytes are those of an earlier one (a file dropped twice, ``cell - Copy.jpg``
    beside ``cell.jpg``). Each is analysed as an image of its own, so its cells count twice: said, not
    silently counted ("4 cells: NGB 3" from one cell and two copies)."""

    def __init__(self) -> None:
        self._first: dict[bytes, str] = {}  # sha256 -> the first image of those bytes
        self.copies: list[tuple[str, str]] = []  # (copy, the image it repeats), in upload order

    def add(self, image: InputImage) -> None:
        first = self._first.setdefault(hashlib.sha256(image.content).digest(), image.name)
        if first != image.name:
            self.copies.append((image.name, first))

    def warning(self, slide: bool = False) -> str | None:
        """What the copies did to the counts; ``slide``: fields of one slide, where a copy lies over its original
        and its cells are counted once (it said "counted as an image of its own" there too)."""
        if not self.copies:
            return None
        # "X and Y", not "X is a copy of Y": a folder is read by name, and "cell - Copy.jpg" sorts first
        shown = "; ".join(f"{first} and {copy} are the same image" for copy, first in self.copies[:3])
        many = len(self.copies) > 1
        effect = ("each lies over the other, so its cells are counted once, but each counts as a field in the "
                  "means per field" if slide else "each was analysed and counted as an image of its own")
        return (f"{len(self.copies)} image{'s' if many else ''} of the upload repeat{'' if many else 's'} another "
                f"({shown}{'; ...' if len(self.copies) > 3 else ''}): {effect}")
