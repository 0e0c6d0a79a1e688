"""The student to ship: the registry alias, its data lineage, and `mlflow models serve` answering
HTTP requests with exactly the predictions metrics/distilled.json was computed from."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request

import mlflow
import pytest
import torch

from kd.process import files
from kd.track import model_registry
from tests.conftest import ROOT, STAGES, metrics_file, project, run_stage
from tools.query import invoke


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The digits pipeline once, in its own store."""
    with project(tmp_path_factory, "ship") as (folder, uri):
        for name in STAGES:
            run_stage(name)
        yield folder, uri


def test_every_training_run_records_the_stored_splits_as_dataset_inputs(shipped):
    folder, uri = shipped
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([mlflow.get_experiment_by_name("knowledge-distillation").experiment_id])
    training = [r for r in runs if r.info.run_name in ("teacher", "student", "distill")]
    assert len(training) == 3
    for run in training:
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"digits/train", "digits/val", "digits/test"}, run.info.run_name
        for split, context in (("train", "training"), ("val", "validation"), ("test", "evaluation")):
            d = inputs[f"digits/{split}"]
            sha = files.file_sha256(folder / f"data/digits/{split}.pt")
            assert d.dataset.digest == sha[:32]
            assert {t.key: t.value for t in d.tags} == {"mlflow.data.context": context, "sha256": sha}


def test_the_alias_names_the_registered_student(shipped):
    _, uri = shipped
    client = mlflow.MlflowClient(uri)
    held = client.get_model_version_by_alias("distilled-student", model_registry.alias("digits"))
    assert str(held.version) == "1" and held.tags["loss"] == "kd"
    assert float(held.tags["val_acc"]) == pytest.approx(metrics_file(shipped[0], "distilled")["val_acc"],
                                                        abs=1e-6)


class _Version:
    def __init__(self, val_acc):
        self.tags = {"val_acc": str(val_acc)}


class _Registry:
    """An MLflow client's registry calls, in memory."""

    def __init__(self):
        self.aliases, self.versions = {}, {}

    def get_registered_model(self, model):
        return types.SimpleNamespace(aliases=dict(self.aliases))

    def get_model_version(self, model, version):
        return self.versions[version]

    def set_registered_model_alias(self, model, alias, version):
        self.aliases[alias] = version


def test_the_alias_moves_only_to_a_strictly_better_validation_accuracy_per_dataset():
    reg = _Registry()
    moves = []
    for version, dataset, val in (("1", "digits", 0.90), ("2", "digits", 0.89), ("3", "digits", 0.90),
                                  ("4", "mnist", 0.50), ("5", "digits", 0.91)):
        reg.versions[version] = _Version(val)
        moves.append(model_registry.promote(reg, "distilled-student", version, dataset, val))
    assert moves == [True, False, False, True, True]  # a tie keeps the holder
    assert reg.aliases == {"ship-digits": "5", "ship-mnist": "4"}


def test_a_new_version_is_tagged_and_the_alias_follows_validation_not_test_accuracy(mlflow_store):
    """model_registry.tag_and_promote as the distill stage calls it, with tags where the two splits
    rank the versions in opposite orders: the test split chooses nothing."""
    class Tagging(_Registry):
        def set_model_version_tag(self, model, version, key, value):
            self.versions.setdefault(version, types.SimpleNamespace(tags={})).tags[key] = value

    reg, held = Tagging(), []
    for version, val, test in (("1", 0.90, 0.80), ("2", 0.85, 0.95), ("3", 0.95, 0.70)):
        model_registry.tag_and_promote(reg, version, {"dataset": "digits", "val_acc": val, "test_acc": test})
        held.append(reg.aliases["ship-digits"])
    assert held == ["1", "1", "3"]
    assert reg.versions["2"].tags == {"dataset": "digits", "val_acc": "0.85", "test_acc": "0.95"}


def test_an_unexpected_registry_error_is_not_taken_for_a_missing_alias():
    class Down(_Registry):
        def get_registered_model(self, model):
            raise mlflow.exceptions.MlflowException("connection refused")
    with pytest.raises(mlflow.exceptions.MlflowException, match="refused"):
        model_registry.promote(Down(), "distilled-student", "1", "digits", 0.9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(shipped, *command: str):
    """Start a scoring server on the shipped student; yields its /invocations URL."""
    folder, uri = shipped
    port = _free_port()
    # The server starts `uvicorn` by name: this environment's, as under `uv run`.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(ROOT),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    model = f"models:/distilled-student@{model_registry.alias('digits')}"
    proc = subprocess.Popen([sys.executable, "-m", *command, "-m", model, "-p", str(port)],
                            cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow models serve did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/invocations"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(shipped):
    yield from _serve(shipped, "mlflow", "models", "serve", "--env-manager", "local",
                      "-h", "127.0.0.1", "-w", "1")


GUARD_LIMIT = 300_000  # bytes: about 1,000 digits images as JSON; the 100,000-deep test fits


@pytest.fixture(scope="module")
def guarded(shipped):
    yield from _serve(shipped, "tools.serve", "--max-bytes", str(GUARD_LIMIT))


def test_the_served_student_answers_with_the_predictions_its_metrics_came_from(shipped, server):
    folder, _ = shipped
    test = torch.load(folder / "data/digits/test.pt")
    ckpt = torch.load(folder / "model/distilled.pt")
    logits = torch.tensor(invoke(server, test["x"].tolist()))
    assert torch.equal(logits.argmax(1), ckpt["test_logits"].argmax(1))
    torch.testing.assert_close(logits, ckpt["test_logits"], rtol=1e-5, atol=1e-5)
    errors = int((logits.argmax(1) != test["y"]).sum())
    assert errors == metrics_file(folder, "distilled")["test_errors"]
    # Whole numbers sent as floats are the same pixels (defined, not refused).
    as_floats = torch.tensor(invoke(server, test["x"][:5].double().tolist()))
    assert torch.equal(as_floats, torch.tensor(invoke(server, test["x"][:5].tolist())))


def _refusal(url, images) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as err:
        invoke(url, images)
    return err.value.code, json.loads(err.value.read()).get("message", "")


@pytest.mark.parametrize("case, message", [
    ("scaled to [0, 1]", "pixel values must be whole numbers 0..255"),
    ("x + 0.99", "pixel values must be whole numbers 0..255"),
    ("above 255", "pixel values must be whole numbers 0..255"),
    ("negative", "pixel values must be whole numbers 0..255"),
    ("wrong shape", "shape"),
    ("strings", ""),
])
def test_a_malformed_request_gets_a_4xx_and_the_server_lives_on(shipped, server, case, message):
    folder, _ = shipped
    x = torch.load(folder / "data/digits/test.pt")["x"][:4].double()
    images = {"scaled to [0, 1]": (x / 255).tolist(), "x + 0.99": (x + 0.99).tolist(),
              "above 255": (x + 300).tolist(), "negative": (x - 1).tolist(),
              "wrong shape": x[:, :, :4].tolist(),
              "strings": [[["a"] * 8] * 8] * 4}[case]
    code, text = _refusal(server, images)
    assert 400 <= code < 500, (code, text)
    assert message.lower() in text.lower(), text[-500:]
    # and it still serves
    assert len(invoke(server, x.tolist())) == 4


def test_tools_serve_answers_as_mlflow_serves(shipped, server, guarded):
    folder, _ = shipped
    x = torch.load(folder / "data/digits/test.pt")["x"][:50]
    assert invoke(guarded, x.tolist()) == invoke(server, x.tolist())
    # MLflow's own refusals pass through unchanged
    assert _refusal(guarded, x[:, :, :4].tolist()) == _refusal(server, x[:, :, :4].tolist())


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if e.headers.get_content_type() == "application/json" \
            else text.decode(errors="replace")


def test_tools_serve_refuses_what_it_cannot_mean(shipped, server, guarded):
    """Each a clear 4xx, where MLflow's own server takes a boolean as 1, answers deep nesting
    with a bare 500 and reads any size; the server lives on."""
    folder, _ = shipped
    x = torch.load(folder / "data/digits/test.pt")["x"]
    one = x[:1].tolist()
    with_true = json.dumps({"inputs": one}).replace("0", "true", 1).encode()
    assert _post(server, with_true)[0] == 200  # the defect: true read as the pixel value 1
    code, answer = _post(guarded, with_true)
    assert (code, answer["error_code"]) == (400, "BAD_REQUEST")
    assert answer["message"].startswith("a boolean (true or false) where a number belongs")

    # The README's literal request, and its answer as the README shows it
    readme = (ROOT / "README.md").read_text()
    request, answer = re.search(r"-d '(.*?)'`\s+answers `(.*?)`", readme).groups()
    code, text = _post(guarded, request.encode())
    assert (code, text) == (400, json.loads(answer))

    deep = b'{"inputs": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    assert _post(server, deep)[0] == 500  # the defect: a RecursionError in MLflow's parser
    assert _post(guarded, deep) == (400, {
        "error_code": "BAD_REQUEST",
        "message": "the JSON is nested too deep to read; this model takes at most 6 levels"})
    code, answer = _post(guarded, json.dumps({"inputs": [[[[[[1] * 8] * 8]]]]}).encode())
    assert code == 400 and answer["message"].startswith("the JSON is nested 7 deep; this model's")

    big = json.dumps({"inputs": x.repeat(6, 1, 1, 1).tolist()}).encode()
    assert len(big) > GUARD_LIMIT
    assert _post(guarded, big) == (413, {
        "error_code": "REQUEST_TOO_LARGE",
        "message": f"the request is larger than this server's limit of {GUARD_LIMIT:,} bytes "
                   "(tools.serve --max-bytes); send fewer images per request"})
    assert len(invoke(guarded, x[:4].tolist())) == 4


def test_tools_query_on_a_folder_that_is_not_a_prepared_dataset_is_one_line(tmp_path, capsys):
    from tools import query
    with pytest.raises(SystemExit) as stop:
        query.main(["--data", str(tmp_path)])
    assert stop.value.code == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'meta.json'}: no such file, so "
                                       f"{tmp_path} is not a prepared dataset; run the download "
                                       "stage, or pass the folder it wrote\n")
