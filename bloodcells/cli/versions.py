"""Commands for the versions of a classifier tree: which is in use, promoting, switching, rolling back
(the Training page's Versions section, for a server run from the command line)."""

from . import CommandError, command


def _versions_args(parser):
    parser.add_argument("action", choices=["list", "promote", "use", "rollback", "log"],
                        help="list: the versions and which is in use; promote FOLDER: make a trained tree folder "
                             "the one in use (copied, verified, registered in the database); use VERSION: put a "
                             "listed version (or 'shipped') in use; rollback: put back the version in use before; "
                             "log: every switch of the version in use, by whom and when")
    parser.add_argument("target", nargs="?", help="promote: a trained tree's folder; use: a version id or 'shipped'")
    parser.add_argument("--tree", default="default", help="the tree's name (default: default)")
    parser.add_argument("--by", default=_login(), help="who switches the version in use, for its log (default: "
                                                       "your login name)")


def _login() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name: --by is then needed to switch
        return None


@command("versions", "list, promote, switch or roll back the classifier tree's versions", _versions_args)
def _versions(args) -> int:
    from .. import versions
    from ..clock import stamp

    # a tree of that name must exist, but for its first promotion (listed as "* shipped": a mistyped --tree)
    if args.action != "promote" and not versions.shipped_dir(args.tree).is_dir() and not versions.list_versions(args.tree):
        raise CommandError(f"no tree {args.tree!r} in {versions.shipped_dir(args.tree).parent}")
    needs_target = args.action in ("promote", "use")
    if needs_target and not args.target:
        raise CommandError(f"versions {args.action} needs a {'FOLDER' if args.action == 'promote' else 'VERSION'}")
    if not needs_target and args.target:
        raise CommandError(f"versions {args.action} takes no {args.target!r}")
    if args.action in ("promote", "use", "rollback") and not (args.by or "").strip():
        raise CommandError("--by NAME: say who switches the version in use, for its log (no login name was found)")
    try:
        if args.action == "promote":
            from ..store import open_store

            folder = versions.promote(args.target, args.tree, store=open_store(), by=args.by)
            print(f"{folder.name} is in use for tree {args.tree!r} ({folder}); the one before is kept for rollback")
        elif args.action == "use":
            version = None if args.target == versions.SHIPPED else args.target
            print(f"{args.target} is in use for tree {args.tree!r} ({versions.use_version(args.tree, version, by=args.by)})")
        elif args.action == "rollback":
            versions.rollback(args.tree, by=args.by)
            print(f"rolled back: {versions.current_version(args.tree) or versions.SHIPPED} is in use "
                  f"for tree {args.tree!r}")
        elif args.action == "log":
            if not (log := versions.switch_log(args.tree)):
                print(f"no switch of tree {args.tree!r} logged yet (it is logged since 2026-12-07)")
            for switch in log:
                print(f"{stamp(switch['at'])}  {switch['action']:<8}  {switch['version'] or versions.SHIPPED}"
                      f"  by {switch['by']}")
        else:
            in_use = versions.current_version(args.tree)
            for version in [None, *versions.list_versions(args.tree)]:
                print(f"{'*' if version == in_use else ' '} {version or versions.SHIPPED}")
    except (ValueError, versions.ModelFileError, FileNotFoundError) as error:
        raise CommandError(str(error)) from error
    return 0
