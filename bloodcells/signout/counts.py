"""The differential's rows: which cells a count takes, in the clinical order, and which it keeps apart
(of a marrow or a blood film); percentages to a tenth that add up to 100; a slide's and smear fields'
counts as stored with a detection."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..store.schema import PERIPHERAL_BLOOD
from ..taxonomy import Tree, default_tree

# (row label, tree codes counted in it), in the order a differential is written. A row takes the cells
# at or under its codes that no row before it took, so an inner node listed after its children's rows
# takes only the cells typed no finer than it: a reviewer's "neutrophil" (NEU, stage unclear) is
# counted with the segmented neutrophils, as labs count an unstaged neutrophil; an immature granulocyte
# of unclear stage (MYI, PBC's "ig") has a row of its own, as analysers report IG, rather than one
# stage's row it may not belong to. An erythroid cell (ERY) is an erythroblast, a thrombopoietic one
# (THR) a platelet: the tree has no other under them.
CLINICAL_ORDER = (
    ("Blasts", ("BLA", "LYI")),
    ("Promyelocytes", ("PMO",)),
    # the abnormal promyelocytes of acute promyelocytic leukaemia, which WHO counts with the blasts: a row of
    # their own beside the promyelocytes (under "Others", 60 of 400 read as nothing in particular)
    ("Faggot cells (abnormal promyelocytes)", ("FGC",)),
    ("Myelocytes", ("MYB",)),
    ("Metamyelocytes", ("MMZ",)),
    ("Immature granulocytes, stage unclear", ("MYI",)),
    ("Band neutrophils", ("NGB",)),
    ("Segmented neutrophils", ("NGS", "NEU")),
    ("Eosinophils", ("EOS", "ABE")),
    ("Basophils", ("BAS",)),
    ("Monocytes", ("MON",)),
    ("Lymphocytes", ("LYT",)),
    ("Plasma cells", ("PLM",)),
    ("Hairy cells", ("HAC",)),
    ("Erythroblasts", ("EBO", "PEB", "ERY")),
)
NEUTROPHIL_ROWS = ("Band neutrophils", "Segmented neutrophils")  # the absolute neutrophil count's
# A blood film's erythroblasts (nucleated red cells) are not white cells: its differential is of the
# white cells, and the erythroblasts are reported apart, per 100 of them (as analysers give NRBC/100 WBC).
ERYTHROBLASTS = next(row for row in CLINICAL_ORDER if row[0] == "Erythroblasts")
NOT_STATED = "not stated"  # the specimen of a sign-off that names none (all before it was asked)
# counted and shown, but not white cells of the differential: not in the denominator
APART = (("Platelets", ("PLT", "THR")), ("Smudge cells", ("KSC",)), ("Not identifiable", ("NIF",)),
         ("Artefacts", ("ART",)))
# of them, the white cells that were seen but given no type: a share of all the white cells seen is reported
UNNAMED_WHITE_CELLS = ("Smudge cells", "Not identifiable")
# every other code: other cells, cells known only to a node above several cell types
# (a lineage, "mature myeloid")
OTHERS = "Others"
TARGETS = (100, 200, 400, 500)  # the usual manual differential counts (CLSI H20; a marrow 500, ICSH 2008 and WHO)
GALLERY_CELLS = 12


class ReportError(ValueError):
    """An analysis that cannot be reported (the message says why)."""


@dataclass
class Row:
    label: str
    count: int
    percent: float | None = None  # to a tenth, over the cells counted
    # its 95% confidence limits (exact, Clopper-Pearson), in percent: 5 blasts of 100 read "5.0%" alone,
    # where the count allows 1.6 to 11.3, across the 5% a diagnosis turns on (CLSI H20 gives Ruemke's table)
    limits: tuple[float, float] | None = None
    per_litre: float | None = None  # x 10^9/L, when the white-cell count is given


@dataclass(frozen=True)
class SmearFields:
    """A detection's red cells and platelets, which its report states beside the white cells (a signed
    blood film's record had only its white cells: no platelet estimate)."""
    fields: int
    red_cells: int  # on a slide, each cell once
    platelets: int
    red_cells_per_field: str  # mean ± SD (range) of each field's own count
    platelets_per_field: str
    slide: bool

    @property
    def platelet_rbc_ratio(self) -> float | None:
        return self.platelets / self.red_cells if self.red_cells else None


def smear_fields(summary: dict | None) -> SmearFields | None:
    """The red cells and platelets of a detection's stored summary (a slide's, each cell once), or None
    for an analysis with none."""
    from ..detection.slide import Spread

    summary = summary or {}
    if slide := summary.get("slide"):
        counts, fields = slide["counts"], len(slide["fields"])
        red, platelets = Spread(**slide["rbc_per_field"]), Spread(**slide["plt_per_field"])
    elif per_image := summary.get("per_image"):
        counts, fields = summary["counts"], len(per_image)
        red, platelets = (Spread.of([image["counts"].get(code, 0) for image in per_image.values()])
                          for code in ("RBC", "PLT"))
    else:
        return None
    return SmearFields(fields, counts.get("RBC", 0), counts.get("PLT", 0), str(red), str(platelets), bool(slide))


def clinical_rows(codes: Iterable[str], tree: Tree | None = None, white_cell_count: float | None = None,
                  specimen: str | None = None, limits: bool = False) -> tuple[list[Row], list[Row], int]:
    """The differential rows in clinical order, the rows kept apart, and the cells counted.

    Percentages, to a tenth, are over the counted cells and add up to 100 (``percentages``);
    ``white_cell_count`` (x 10^9/L) gives each row's absolute count. A code is counted in the first row
    whose codes lie at or above it. Of a ``specimen`` of peripheral blood, erythroblasts are kept apart.
    ``limits``: each row's 95% limits too (the report's; 14 ms a call, which the count log's thousands of
    analyses and a slide's every white cell do not need).
    """
    tree = tree or default_tree()
    counts = Counter(codes)
    unknown = sorted(code for code in counts if code not in tree)
    if unknown:
        raise ReportError(f"codes not in tree {tree.name!r}: {', '.join(unknown)}")

    def gather(groups) -> tuple[list[Row], set[str]]:
        rows, used = [], set()
        for label, group in groups:
            mine = [code for code in counts if code not in used
                    and any(tree.is_ancestor(tree[g], tree[code]) for g in group if g in tree)]
            used.update(mine)
            rows.append(Row(label, sum(counts[code] for code in mine)))
        return rows, used

    blood_film = specimen == PERIPHERAL_BLOOD
    apart, kept_apart = gather(APART + (ERYTHROBLASTS,) if blood_film else APART)
    rows, in_rows = gather(tuple(row for row in CLINICAL_ORDER if not (blood_film and row == ERYTHROBLASTS)))
    rows.append(Row(OTHERS, sum(n for code, n in counts.items() if code not in in_rows | kept_apart)))
    counted = sum(row.count for row in rows)
    if counted:
        for row, percent in zip(rows, percentages([row.count for row in rows]), strict=True):
            row.percent = percent
            if limits:
                row.limits = exact_limits(row.count, counted)
            if white_cell_count is not None:
                row.per_litre = white_cell_count * row.count / counted
    return rows, [row for row in apart if row.count], counted


def exact_limits(count: int, total: int) -> tuple[float, float]:
    """The 95% limits, in percent to a tenth, of a share of ``count`` in ``total`` (exact binomial)."""
    from scipy.stats import binomtest

    interval = binomtest(count, total).proportion_ci(0.95, method="exact")
    return round(100 * interval.low, 1), round(100 * interval.high, 1)


def in_differential(code: str, tree: Tree | None = None, specimen: str | None = None) -> bool:
    """Whether a cell typed ``code`` counts in the differential of ``specimen`` (is not kept apart); a code
    of another tree (a classifier trained with its own) counts, as one of the "Others" would."""
    tree = tree or default_tree()
    return code not in tree or clinical_rows([code], tree, specimen=specimen)[2] == 1


def erythroblasts_per_100(apart: list[Row], counted: int) -> float | None:
    """A blood film's erythroblasts (in ``apart``, as ``clinical_rows`` keeps them) per 100 white cells
    counted; None without white cells."""
    erythroblasts = next((row.count for row in apart if row.label == ERYTHROBLASTS[0]), 0)
    return 100 * erythroblasts / counted if counted else None


def percentages(counts: list[int]) -> list[float]:
    """Percentages of ``counts`` (not all zero) to a tenth, as automated differentials give them, that
    add up to 100.0, so that the report's "Total counted ... 100.0" is true (each rounded alone, 1:1:1
    gave 33 + 33 + 33). Each is rounded down to its tenth and the tenths left go to the largest
    remainders (largest remainder method), on a tie to the larger count, then to the first; so no
    figure is more than a tenth off. In whole numbers that could be a whole point: 6 of 29 cells
    (20.7%) read 20% in one report and 21% in its amendment, where only other rows had changed."""
    total = sum(counts)
    shares = [divmod(1000 * count, total) for count in counts]  # (tenths of a percent, remainder in 1/total)
    tenths = [whole for whole, _ in shares]
    by_remainder = sorted(range(len(counts)), key=lambda n: (-shares[n][1], -counts[n]))
    for n in by_remainder[:1000 - sum(tenths)]:
        tenths[n] += 1
    return [value / 10 for value in tenths]


@dataclass(frozen=True)
class SlideDifferential:
    """The white cells a slide-mode detection counted, field by field, up to its target."""
    target: int
    codes: Counter  # tree code -> white cells of that type counted


def differential_codes(analysis) -> list[str]:
    """The cell types an analysis's differential counts: its cells' final types (a reviewer's where given), the
    white cells a detection typed and counted among them. A detection stored before its white cells were kept
    as cells (2026-12-07) has none: its slide's counted white cells, else every typed white cell."""
    if analysis.predictions or analysis.kind != "detection":
        return [p.final_code for p in analysis.predictions]
    slide = slide_differential(analysis.summary)
    return list(slide.codes.elements()) if slide else [d.code for d in analysis.detections if d.code]


def slide_differential(summary: dict | None) -> SlideDifferential | None:
    """A slide-mode analysis's differential as its Slide panel shows it (None for any other analysis):
    the report, the count log and the page must count these cells, not every white cell on the fields."""
    white = (summary or {}).get("slide", {}).get("white_cells")
    if not white:
        return None
    counted = Counter({code: row["count"] for code, row in white["differential"].items()})
    return SlideDifferential(white["target"], counted)
