"""Reading a params file as DVC reads it, within bounds, before anything uses a value from it.

Two readers see params.yaml: DVC (ruamel.yaml, for `params:` deps, `dvc exp show`, `-S`) and the
stages (kd/config/params.py `load`, and kd/process/numerics.py `prepare` before torch is imported).
They must agree on what the file says, and a file no stage can mean must be one line, not a
traceback:
- a duplicate key (`T: 1` ... `T: 2`): PyYAML keeps the last value, DVC 3.67 refuses the whole
  file (ruamel's DuplicateKeyError: "unable to read: 'params.yaml', YAML file structure is
  corrupted"); so it is refused here too, naming the key and both lines;
- bytes that are not UTF-8 (DVC reads the file as UTF-8);
- nesting deeper than `MAX_DEPTH` (PyYAML's composer recurses: 10,000 levels are a RecursionError),
  a file over `MAX_BYTES` (a 200,000-item list takes minutes to validate), and anchors/aliases
  (`*x` repeated builds exponentially large values from a small file; Hydra never writes them).
The nesting and aliases are found from PyYAML's event stream, which is read without recursion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kd.errors import PipelineError

MAX_BYTES = 64 * 1024  # params.yaml is ~1 KiB; a cifar100 class list is a few hundred bytes
MAX_DEPTH = 16  # params.yaml nests two levels (section.key, then a class list)


class ParamsFileError(PipelineError):
    """The params file cannot be read as DVC reads it; the message does not name the file."""


class _UniqueKeys(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding a key twice, as DVC's ruamel.yaml does."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key ([1]: x): SafeLoader's own error follows
                continue
            if first != line:
                raise ParamsFileError(f"key {key!r} appears twice (lines {first} and {line}); DVC "
                                      "refuses a file with a duplicate key: keep one")
        return super().construct_mapping(node, deep)


def read(path: str | Path) -> Any:
    """The parsed content of `path`. Raises FileNotFoundError, or ParamsFileError saying why the
    file cannot be read (see the module's docstring)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ParamsFileError(f"{size:,} bytes, more than a params file holds (at most "
                              f"{MAX_BYTES:,}); is it the right file?")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamsFileError(f"not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                              "save it as UTF-8, as DVC reads it") from None
    try:
        _bounded(text)
        return yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ParamsFileError(f"not valid YAML ({' '.join(str(e).split())[:200]})") from None


def _bounded(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ParamsFileError(f"an alias (*{event.anchor}) at line {event.start_mark.line + 1}; "
                                  "write the value out: params hold no anchors or aliases")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise ParamsFileError(f"nested more than {MAX_DEPTH} deep (line "
                                      f"{event.start_mark.line + 1}); params nest two levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
