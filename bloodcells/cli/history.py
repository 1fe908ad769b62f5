"""``bloodcells analyses``: the stored analyses, as History lists them (how a command-line user finds
the id that ``report`` takes)."""

from __future__ import annotations

from . import command, whole


def _analyses_args(parser):
    parser.add_argument("--search", default="", metavar="TEXT",
                        help="only analyses whose name contains TEXT (case and accents ignored), or whose id it is")
    parser.add_argument("--kind", choices=["classification", "detection"], help="only this kind")
    parser.add_argument("--limit", type=whole(1), default=20, help="the newest this many (default 20)")


@command("analyses", "list the stored analyses, newest first (id, date, kind, status, cells, name)", _analyses_args)
def _analyses(args) -> int:
    from ..report import analysis_overview
    from ..store import NoDatabase, open_store

    try:
        store = open_store(create=False)
    except NoDatabase as error:  # made empty here, a mistyped path read as "the lab's analyses are gone"
        print(f"no analyses yet ({error})")
        return 0
    rows = analysis_overview(store, kind=args.kind, limit=args.limit, search=args.search)
    if not rows:
        kind = f"{args.kind} " if args.kind else ""
        print(f"no {kind}analyses" + (f" match {args.search!r}" if args.search else " yet"))
    for row in rows:
        flagged = f", {row['needs review']} to review" if row["needs review"] else ""
        error = f" ({row['error']})" if row["error"] else ""
        print(f"#{row['id']}\t{row['date']}\t{row['kind']}\t{row['status']}{error}\t{row['count']}{flagged}\t{row['name']}")
    return 0
