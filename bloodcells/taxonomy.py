"""The cell-type tree: haematopoietic differentiation as a tree of coded nodes.

A tree is defined in YAML (see ``trees/default.yaml``); every node has a code, a display name
and aliases, so that dataset folder names, file-name prefixes (PBC's ``BNE_``/``SNE_``...),
Matek codes and plain English names all resolve to one node.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePath

import yaml

TREES_DIR = Path(__file__).with_name("trees")


class UnknownLabelError(ValueError):
    """A label that names no node of the tree."""

    def __init__(self, label: str, suggestions: list[str], where: str = ""):
        self.label, self.suggestions, self.where = label, suggestions, where
        hint = f"; nearest known names: {', '.join(suggestions)}" if suggestions else ""
        super().__init__(f"{where + ': ' if where else ''}unknown cell type label {label!r}{hint}")


class TreeFormatError(ValueError):
    """A tree file that does not follow the format."""


@dataclass(eq=False)
class Node:
    code: str
    name: str
    aliases: tuple[str, ...] = ()
    parent: Node | None = field(default=None, repr=False)
    children: list[Node] = field(default_factory=list, repr=False)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def title(self) -> str:
        """The name as a person reads it ("myeloid immature" for ``myeloid_immature``)."""
        return self.name.replace("_", " ")

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    def walk(self) -> Iterator[Node]:
        """This node and everything below it, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()

    def __str__(self) -> str:
        return f"{self.code} ({self.name})"


class Tree:
    """A cell-type tree with label resolution."""

    def __init__(self, name: str, root: Node):
        self.name = name
        self.root = root
        self.nodes: dict[str, Node] = {}
        self._names: dict[str, Node] = {}
        for node in root.walk():
            if node.code in self.nodes:
                raise TreeFormatError(f"tree {name!r}: code {node.code!r} appears twice")
            self.nodes[node.code] = node
        for node in root.walk():
            for key in (node.code, node.name, *node.aliases):
                owner = self._names.setdefault(_fold(key), node)
                if owner is not node:
                    raise TreeFormatError(
                        f"tree {name!r}: name {key!r} is used by both {owner.code} and {node.code}"
                    )

    # -- lookup ------------------------------------------------------------------------------
    def __getitem__(self, code: str) -> Node:
        return self.nodes[code]

    def __contains__(self, code: str) -> bool:
        return code in self.nodes

    def find(self, label: str) -> Node | None:
        """The node a label names (code, display name or alias, any case), or None."""
        return self._names.get(_fold(label))

    def resolve(self, label: str) -> Node:
        """The node a label names; raises UnknownLabelError listing the nearest names."""
        node = self.find(label)
        if node is None:
            known = sorted({n.code for n in self.nodes.values()} | {n.name for n in self.nodes.values()})
            close = difflib.get_close_matches(label, known, n=5, cutoff=0.5)
            close += [k for k in difflib.get_close_matches(_fold(label), list(self._names), n=5, cutoff=0.6)
                      if k not in map(_fold, close)]
            raise UnknownLabelError(label, close[:5])
        return node

    def label_for_file(self, relative_path: str | PurePath) -> Node:
        """The finest node a file's location names.

        The innermost folder that names a node gives the label; a file-name prefix
        (``BNE_1234.jpg``) refines it when the prefix names a node under that folder's node.
        A file with no resolvable folder falls back to its prefix alone.
        """
        path = PurePath(relative_path)
        folder_node = None
        for part in reversed(path.parent.parts):
            folder_node = self.find(part)
            if folder_node is not None:
                break
        prefix = path.stem.split("_")[0] if "_" in path.stem else None
        prefix_node = self.find(prefix) if prefix else None
        if folder_node is None:
            if prefix_node is None:
                raise self._unknown_for_path(path)
            return prefix_node
        if prefix_node is not None and self.is_ancestor(folder_node, prefix_node):
            return prefix_node
        return folder_node

    def _unknown_for_path(self, path: PurePath) -> UnknownLabelError:
        label = path.parent.name or path.stem
        try:
            self.resolve(label)
        except UnknownLabelError as error:
            return UnknownLabelError(label, error.suggestions, where=path.as_posix())
        raise AssertionError("unreachable")

    # -- structure ---------------------------------------------------------------------------
    def path(self, code: str) -> list[Node]:
        """Nodes from the root down to ``code``."""
        node, chain = self.nodes[code], []
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain[::-1]

    def path_codes(self, code: str) -> str:
        return "/".join(n.code for n in self.path(code))

    def children(self, code: str) -> list[Node]:
        return list(self.nodes[code].children)

    def subtree(self, code: str) -> list[Node]:
        return list(self.nodes[code].walk())

    def leaves(self, code: str | None = None) -> list[Node]:
        start = self.nodes[code] if code else self.root
        return [n for n in start.walk() if n.is_leaf]

    def inner_nodes(self) -> list[Node]:
        return [n for n in self.root.walk() if not n.is_leaf]

    def is_ancestor(self, ancestor: Node, node: Node) -> bool:
        """True when ``ancestor`` is ``node`` or lies above it."""
        while node is not None:
            if node is ancestor:
                return True
            node = node.parent
        return False

    def child_towards(self, parent_code: str, code: str) -> Node | None:
        """The child of ``parent_code`` on the way to ``code`` (None if ``code`` is not below it)."""
        chain = self.path(code)
        for upper, lower in zip(chain, chain[1:], strict=False):
            if upper.code == parent_code:
                return lower
        return None

    # -- display -----------------------------------------------------------------------------
    def render(self) -> str:
        lines = []
        for node in self.root.walk():
            aliases = f"  [{', '.join(node.aliases)}]" if node.aliases else ""
            lines.append(f"{'  ' * node.depth}{node.code}  {node.name}{aliases}")
        return "\n".join(lines)


def _fold(label: str) -> str:
    return " ".join(str(label).replace("_", " ").replace("-", " ").split()).casefold()


def _build(spec: dict, parent: Node | None, where: str) -> Node:
    if not isinstance(spec, dict) or "code" not in spec or "name" not in spec:
        raise TreeFormatError(f"{where}: every node needs a 'code' and a 'name', got {spec!r}")
    aliases = spec.get("aliases") or []
    if not isinstance(aliases, list):
        raise TreeFormatError(f"{where}: 'aliases' of {spec['code']} must be a list")
    node = Node(code=str(spec["code"]), name=str(spec["name"]),
                aliases=tuple(str(a) for a in aliases), parent=parent)
    children = spec.get("children") or []
    if not isinstance(children, list):
        raise TreeFormatError(f"{where}: 'children' of {spec['code']} must be a list")
    for child in children:
        node.children.append(_build(child, node, where))
    return node


def load_tree(source: str | Path | None = None) -> Tree:
    """Load a tree from a YAML file, or a bundled tree by name (default: ``default``)."""
    path = Path(source) if source and Path(source).suffix in {".yaml", ".yml"} else \
        TREES_DIR / f"{source or 'default'}.yaml"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in TREES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no tree file {path} (bundled trees: {bundled})")
    try:  # bytes: PyYAML decodes them, and says so (a YAMLError) when they are not UTF-8 or UTF-16 text
        spec = yaml.safe_load(path.read_bytes())
    except yaml.YAMLError as error:  # its own text is several lines, quoting the file: one line instead
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise TreeFormatError(f"{path}{where}: not a valid YAML file ({problem})") from error
    if not isinstance(spec, dict) or "root" not in spec:
        raise TreeFormatError(f"{path}: a tree file needs a top-level 'root' node")
    return Tree(str(spec.get("name") or path.stem), _build(spec["root"], None, str(path)))


@cache
def default_tree() -> Tree:
    return load_tree()
