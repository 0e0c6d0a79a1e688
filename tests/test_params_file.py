"""params.yaml read as DVC reads it, within bounds (kd/config/params_file.py), by validation and by
numerics.prepare alike: each unreadable file is one line and exit status 2, never a traceback."""

import subprocess
import sys
import time

import pytest
import yaml

from kd.config import params_file
from kd.config.archs import parse_arch
from tests.conftest import ROOT, tiny_params


def stage_check(folder):
    """`python -m stages.check` as DVC runs it: numerics.prepare reads the file before validation."""
    return subprocess.run([sys.executable, "-m", "stages.check"], cwd=folder, capture_output=True,
                          text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                               "KD_TRACKING": "off"})


def tiny_text() -> str:
    return yaml.safe_dump(tiny_params(), sort_keys=False)


@pytest.mark.parametrize("content,message", [
    (lambda: tiny_text().encode().replace(b"digits", b"d\xefgits"),
     "params.yaml: not UTF-8 text (byte 0xef at offset 10); save it as UTF-8, as DVC reads it"),
    (lambda: ("x: " + "[" * 10000 + "]" * 10000 + "\n" + tiny_text()).encode(),
     "params.yaml: nested more than 16 deep (line 1); params nest two levels"),
    (lambda: ("x: [" + ", ".join(["1"] * 200000) + "]\n").encode(),
     "params.yaml: 600,004 bytes, more than a params file holds (at most 65,536); is it the "
     "right file?"),
    (lambda: (tiny_text() + "T: 8\n").encode(),
     f"params.yaml: key 'T' appears twice (lines 4 and {tiny_text().count(chr(10)) + 1}); DVC "
     "refuses a file with a duplicate key: keep one"),
    (lambda: b"a: &x [1, 2]\nb: [*x, *x]\n",
     "params.yaml: an alias (*x) at line 2; write the value out: params hold no anchors or "
     "aliases"),
], ids=["not-utf8", "10000-deep", "200000-items", "duplicate-key", "alias"])
def test_an_unreadable_params_file_is_one_line_and_exit_2(tmp_path, content, message):
    (tmp_path / "params.yaml").write_bytes(content())
    began = time.monotonic()
    proc = stage_check(tmp_path)
    assert (proc.returncode, proc.stderr) == (2, f"error: {message}\n")
    assert time.monotonic() - began < 60
    assert not (tmp_path / "checks").exists()


def test_the_duplicate_key_rule_is_dvc_s(tmp_path):
    """DVC 3.x refuses the whole file (ruamel.yaml's DuplicateKeyError): what it will not read,
    no stage reads either, and a file with distinct keys reads the same in both."""
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    text = "T: 1\nalpha: 0.5\nT: 2\n"
    with pytest.raises(YAMLFileCorruptedError):
        parse_yaml(text, "params.yaml")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(params_file.ParamsFileError, match="key 'T' appears twice"):
        params_file.read(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text(tiny_text())
    assert params_file.read(tmp_path / "p.yaml") == parse_yaml(tiny_text(), "params.yaml")


def test_an_arch_takes_ascii_digits_only():
    assert parse_arch("mlp:800-800") == ("mlp", (800, 800))
    assert parse_arch("mlp:\u0668\u0660\u0660") is None  # Arabic-Indic 800
    assert parse_arch("resnet\uff18x4") is None  # fullwidth 8
