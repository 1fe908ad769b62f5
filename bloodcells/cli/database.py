"""Commands for the database and the cell-type tree."""

from . import CommandError, command


# -- db ---------------------------------------------------------------------------------------
def _db_args(parser):
    parser.add_argument("action", choices=["init", "upgrade", "current", "backup"],
                        help="init/upgrade: create or migrate the schema; current: print its revision; backup FILE: "
                             "copy an SQLite database to a new file, safely while the app runs")
    parser.add_argument("file", nargs="?", metavar="FILE", help="backup: the new file to write")
    parser.add_argument("--url", help="database URL (default: BLOODCELLS_DATABASE_URL, else the SQLite file "
                                      "bloodcells.db in BLOODCELLS_DATA_DIR, by default the project's data/)")


@command("db", "create, upgrade or inspect the database schema", _db_args)
def _db(args) -> int:
    from ..store import open_store
    from ..taxonomy import default_tree

    if (args.action == "backup") != (args.file is not None):
        raise CommandError("give a FILE to `db backup` (the new file to write), and only to it")
    store = open_store(args.url, upgrade=args.action not in ("current", "backup"))
    if args.action == "backup":
        print(f"backed up {store.display_url} to {store.backup(args.file)}")
        return 0
    if args.action == "current":
        print(store.current_revision() or "(empty database)")
        return 0
    store.sync_cell_types(default_tree())
    print(f"database ready at {store.display_url} (revision {store.current_revision()})")
    return 0


# -- tree -------------------------------------------------------------------------------------
def _tree_args(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the tree", description="print the tree")
    resolve = actions.add_parser("resolve", help="the node a label names", description="the node a label names")
    resolve.add_argument("label", help="a label, code, alias or file path")
    for action in (show, resolve):
        action.add_argument("--tree", help="a tree YAML file (default: the bundled default tree)")


@command("tree", "show the cell-type tree or resolve a label to a node", _tree_args)
def _tree(args) -> int:
    from ..taxonomy import load_tree

    tree = load_tree(args.tree)
    if args.action == "show":
        print(tree.render())
        return 0
    node = tree.label_for_file(args.label) if "/" in args.label or "." in args.label else tree.resolve(args.label)
    print(f"{node.code}\t{node.name}\t{tree.path_codes(node.code)}")
    return 0
