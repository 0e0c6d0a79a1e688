"""Which experiment names DVC can store: checked before any stage trains (kd/process/cli.py)."""

from __future__ import annotations

import os

# `dvc exp run -n NAME` (DVC_EXP_NAME in the stages) stores the experiment as the git ref
# refs/exps/<2 hex>/<38 hex>/NAME. DVC refuses a name that git-check-ref-format refuses, or with a
# `/`, before any stage runs; but the ref is a file named NAME, first written as NAME.lock, and a
# file name holds at most 255 bytes, so a longer name fails only once every stage has run.
EXP_NAME_BYTES = 255 - len(".lock")
_REF_FORBIDS = " ~^:?*[\\/"  # and control characters; `/` is DVC's own rule


def experiment_name_error(name: str) -> str | None:
    """Why DVC cannot store an experiment of this name, as one line that does not repeat the name
    ("it is 300 bytes long; ..."); None when it can."""
    size = len(os.fsencode(name))  # its ref's file name, in bytes
    bad = next((c for c in name if c in _REF_FORBIDS or ord(c) < 0x20 or c == "\x7f"), None)
    rules = [
        (not name, "it is empty"),
        (size > EXP_NAME_BYTES, f"it is {size} bytes long; DVC stores it as a git ref file, whose name "
                                f"may hold {EXP_NAME_BYTES} bytes (255 less '.lock')"),
        (bad is not None, f"it holds {bad!r}; a git ref may hold no space, control character or any of "
                          "~ ^ : ? * [ \\ (nor / for DVC)"),
        *[(part in name, f"it holds {part!r}, which a git ref may not") for part in ("..", "@{")],
        (name.startswith("."), "it starts with '.', which a git ref may not"),
        (name.endswith("."), "it ends with '.', which a git ref may not"),
        (name.endswith(".lock"), "it ends with '.lock', which a git ref may not"),
    ]
    return next((why for broken, why in rules if broken), None)
