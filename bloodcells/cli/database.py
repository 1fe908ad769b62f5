"""Commands for the database and the cell-type tree."""

from . import CommandError, command


# -- db ---------------------------------------------------------------------------------------
def _db_args(parser):
    parser.add_argument("action", choices=["init", "upgrade", "current"],
                        help="init/upgrade: create or migrate the schema; current: print its revision")
    parser.add_argument("--url", help="database URL (default: BLOODCELLS_DATABASE_URL or data/bloodcells.db)")


@command("db", "create, upgrade or inspect the database schema", _db_args)
def _db(args) -> int:
    from ..store import open_store
    from ..taxonomy import default_tree

    store = open_store(args.url, upgrade=args.action != "current")
    if args.action == "current":
        print(store.current_revision() or "(empty database)")
        return 0
    store.sync_cell_types(default_tree())
    print(f"database ready at {store.display_url} (revision {store.current_revision()})")
    return 0


# -- tree -------------------------------------------------------------------------------------
def _tree_args(parser):
    parser.add_argument("action", choices=["show", "resolve"])
    parser.add_argument("label", nargs="?", help="for resolve: a label, code, alias or file path")
    parser.add_argument("--tree", help="a tree YAML file (default: the bundled default tree)")


@command("tree", "show the cell-type tree or resolve a label to a node", _tree_args)
def _tree(args) -> int:
    from ..taxonomy import load_tree

    tree = load_tree(args.tree)
    if args.action == "show":
        print(tree.render())
        return 0
    if not args.label:
        raise CommandError("tree resolve needs a LABEL")
    node = tree.label_for_file(args.label) if "/" in args.label or "." in args.label else tree.resolve(args.label)
    print(f"{node.code}\t{node.name}\t{tree.path_codes(node.code)}")
    return 0


