"""docs/architecture.md's picture of kd/ is the code's: its places are kd/'s folders, each module is
named in its place's row, the layer table is the import graph's, and no module is long or named
after the standard library's."""

import ast
import re
import sys
from pathlib import Path

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "architecture.md").read_text()
KD = ROOT / "kd"
REGISTRIES = ("losses", "datasets")  # folders of one module per extension, named `<name>` in the doc


def modules() -> dict[str, Path]:
    """kd's modules that hold code, dotted below kd (`train.loop`; a package is its __init__)."""
    out = {}
    for path in KD.rglob("*.py"):
        parts = path.relative_to(KD).with_suffix("").parts
        if path.read_text().strip():
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kd":
                base = node.module.removeprefix("kd").lstrip(".")
                deps |= {f"{base}.{a.name}".lstrip(".") if f"{base}.{a.name}".lstrip(".") in mods
                         else base for a in node.names}
        graph[name] = deps - {name, ""}
    return graph


def layers() -> dict[str, int]:
    graph, memo = imports(), {}

    def layer(m: str, chain: tuple[str, ...] = ()) -> int:
        assert m not in chain, f"import cycle: {' -> '.join((*chain, m))}"
        if m not in memo:
            memo[m] = 1 + max((layer(d, (*chain, m)) for d in graph[m] if d in graph), default=-1)
        return memo[m]
    return {m: layer(m) for m in graph}


def _names(cell: str) -> set[str]:
    """The modules a table cell names: `a.b` code spans; `each \\`losses.<name>\\`` all of a registry."""
    out = set()
    for name in re.findall(r"`([a-z0-9_.<>-]+)`", cell):
        if name.endswith(".<name>"):
            folder = name.removesuffix(".<name>")
            out |= {m for m in modules() if m.startswith(f"{folder}.") and m != f"{folder}.common"}
        else:
            out.add(name)
    return out


def test_the_layer_table_is_the_import_graph():
    table = DOC[DOC.index("| layer | modules |"):]
    table = table[:table.index("\n\n")]
    documented = {m: int(n) for n, cell in re.findall(r"^\| (\d+) \| (.*) \|$", table, re.M)
                  for m in _names(cell)}
    actual = layers()
    wrong = {m: (documented.get(m), n) for m, n in actual.items() if documented.get(m) != n}
    assert not wrong and set(documented) == set(actual), \
        f"docs/architecture.md's layer table: module: (documented, actual) {wrong}; " \
        f"unknown {sorted(set(documented) - set(actual))}"


def test_the_places_are_kds_folders_and_name_each_module():
    tree = DOC[DOC.index("```\nkd/"):]
    tree = tree[:tree.index("\n```", 4)]
    drawn = set(re.findall(r"── ([a-z_]+)/", tree))
    assert drawn == {p.name for p in KD.iterdir() if p.is_dir() and p.name != "__pycache__"}
    rows = dict(re.findall(r"^\| `([a-z_]+)/` \| (.*) \|$", DOC, re.M))
    for module, path in modules().items():
        place, _, name = module.partition(".")
        if path.parent == KD or (place in REGISTRIES and name not in ("", "common")):
            continue  # errors.py is drawn in the tree; a registry's entries are docs/extensions.md's
        assert place in rows, f"no row for kd/{place}/"
        listed = set(re.findall(r"`([a-z0-9_-]+)`", rows[place]))
        assert (name or "__init__") in listed, f"kd/{place}/{name or '__init__'} is not in its row"


def test_no_module_is_long_or_named_after_the_standard_library():
    for path in KD.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 250, f"{path.relative_to(ROOT)} is over 250 lines"
        assert path.stem not in sys.stdlib_module_names, f"{path.relative_to(ROOT)} shadows a stdlib module"
