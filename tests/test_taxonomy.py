import pytest

from bloodcells.taxonomy import TreeFormatError, UnknownLabelError, load_tree


def test_default_tree_has_the_lineages_and_matek_codes(tree):
    assert [n.code for n in tree.children("ALL")] == ["ERY", "LYM", "MYE", "THR", "ABN"]
    assert [n.code for n in tree.children("MYI")] == ["BLA", "PMO", "MYB", "MMZ"]
    assert [n.code for n in tree.children("MYM")] == ["NEU", "BAS", "EOS", "MON"]
    assert [n.code for n in tree.children("NEU")] == ["NGB", "NGS"]
    leaves = {n.code for n in tree.leaves()}
    assert len(leaves) == 22
    assert {"PEB", "EBO", "LYI", "LYT", "PLM", "HAC", "BLA", "PMO", "MYB", "MMZ", "NGB", "NGS", "BAS",
            "EOS", "MON", "PLT", "NIF", "OTH", "ABE", "ART", "KSC", "FGC"} <= leaves
    assert {n.code for n in tree.inner_nodes()} == {"ALL", "ERY", "LYM", "MYE", "MYI", "MYM", "NEU", "THR", "ABN"}


@pytest.mark.parametrize("label, code", [
    # PBC folder names
    ("basophil", "BAS"), ("eosinophil", "EOS"), ("erythroblast", "EBO"), ("ig", "MYI"),
    ("lymphocyte", "LYT"), ("monocyte", "MON"), ("neutrophil", "NEU"), ("platelet", "PLT"),
    # PBC file-name prefixes
    ("BNE", "NGB"), ("SNE", "NGS"), ("PMY", "PMO"), ("MY", "MYB"), ("MMY", "MMZ"),
    # Matek codes, any case, and English names
    ("BLA", "BLA"), ("ngs", "NGS"), ("segmented neutrophil", "NGS"), ("Plasma Cell", "PLM"),
    ("myeloid_immature", "MYI"), ("smudge cell", "KSC"),
])
def test_labels_resolve(tree, label, code):
    assert tree.resolve(label).code == code


def test_unknown_label_lists_it_and_the_nearest_names(tree):
    with pytest.raises(UnknownLabelError) as caught:
        tree.resolve("monocite")
    message = str(caught.value)
    assert "monocite" in message and "monocyte" in message


@pytest.mark.parametrize("path, code", [
    ("pbc/neutrophil/BNE_102129.jpg", "NGB"),
    ("pbc/neutrophil/SNE_1.jpg", "NGS"),
    ("pbc/neutrophil/NEUTROPHIL_77.jpg", "NEU"),  # bare neutrophil stops at the inner node
    ("pbc/ig/IG_102433.jpg", "MYI"),  # bare ig stops at the inner node
    ("pbc/ig/MMY_5.jpg", "MMZ"),
    ("pbc/basophil/BA_101381.jpg", "BAS"),
    ("matek/NGS/NGS_0001.jpg", "NGS"),
    ("deep/nesting/is/fine/EOS/x.png", "EOS"),
    ("eosinophil/LY_3.jpg", "EOS"),  # a prefix outside the folder's subtree does not override it
    ("SNE_4.jpg", "NGS"),  # no folder: the prefix alone
])
def test_file_labels_use_folder_then_prefix(tree, path, code):
    assert tree.label_for_file(path).code == code


def test_structure_queries(tree):
    assert tree.path_codes("NGB") == "ALL/MYE/MYM/NEU/NGB"
    assert [n.code for n in tree.subtree("NEU")] == ["NEU", "NGB", "NGS"]
    assert {n.code for n in tree.leaves("ERY")} == {"PEB", "EBO"}
    assert tree.child_towards("MYE", "NGS").code == "MYM"
    assert tree.child_towards("LYM", "NGS") is None


def test_any_tree_in_the_same_format_loads(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text("name: small\nroot:\n  code: R\n  name: root\n  children:\n"
                    "    - {code: A, name: alpha, aliases: [a1]}\n    - {code: B, name: beta}\n")
    small = load_tree(path)
    assert small.name == "small" and small.resolve("A1").code == "A"
    path.write_text("root:\n  code: R\n  name: root\n  children:\n    - {code: A, name: x}\n    - {code: A, name: y}\n")
    with pytest.raises(TreeFormatError, match="appears twice"):
        load_tree(path)


@pytest.mark.parametrize(("text", "said"), [
    ("x: [", r"bad.yaml, line 1, column 5: not a valid YAML file \(expected the node content"),
    (b"root: \xff\xfe\x00", r"bad.yaml: not a valid YAML file \(unacceptable character #x00ff"),
    ("root: {code: R, name: r, children: 5}", r"bad.yaml: 'children' of R must be a list")])
def test_a_malformed_tree_file_is_one_line_naming_the_file_and_the_place(tmp_path, text, said):
    """It was PyYAML's traceback (or a TypeError) from every command given the file with --tree."""
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TreeFormatError, match=said) as raised:
        load_tree(path)
    assert "\n" not in str(raised.value)


def test_a_nodes_title_is_its_name_as_people_read_it(tree):
    """Review's counts table said "myeloid_immature"; every page and report takes the title."""
    assert tree["MYI"].name == "myeloid_immature" and tree["MYI"].title == "myeloid immature"
    assert tree["NGS"].title == "segmented neutrophil"
