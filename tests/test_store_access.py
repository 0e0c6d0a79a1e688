"""The check stage proves the MLflow store usable (kd/track/store_access.py): a kind of store
MLflow has, a server that lets the stages' credentials read and write, a SQLite file that passes
its integrity check; each refusal one line, before any output is touched."""

import base64
import http.server
import json
import sqlite3
import threading

import pytest

from stages import check
from tests.conftest import fails_cleanly


class FakeServer(http.server.BaseHTTPRequestHandler):
    """An MLflow server's REST API in miniature: `status` answers every request (401: a login in
    front of it, /health included), or, when None, an API where `user` may read and `writer` write."""

    status: int | None = None
    users = {"reader": "pw", "writer": "pw"}
    experiments: dict[str, str] = {}
    calls: list[str] = []

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(f"GET {self.path.split('?')[0]}")
        if self.status:
            return self._answer(self.status, {})
        if self.path == "/health":
            return self._answer(200, {})
        if self._user() is None:
            return self._answer(401, {"error_code": "UNAUTHENTICATED"})
        name = self.path.partition("experiment_name=")[2]
        if name in self.experiments:
            return self._answer(200, {"experiment": {"experiment_id": self.experiments[name]}})
        return self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})

    def do_POST(self):
        self.calls.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = self._user()
        if user is None:
            return self._answer(401, {"error_code": "UNAUTHENTICATED"})
        if user != "writer":
            return self._answer(403, {"error_code": "PERMISSION_DENIED"})
        if self.path.endswith("/create"):
            self.experiments[body["name"]] = "1"
        return self._answer(200, {})

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    FakeServer.status, FakeServer.experiments, FakeServer.calls = None, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                "MLFLOW_TRACKING_AUTH", "MLFLOW_EXPERIMENT_NAME", "KD_TRACKING"):
        monkeypatch.delenv(var, raising=False)
    yield url
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("uri", ["foo://bar", "mlruns", "file:///tmp/mlruns"])
def test_a_store_mlflow_has_no_kind_for_is_one_line(uri, workdir, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("KD_TRACKING", raising=False)
    msg = fails_cleanly(check.main, [], workdir, capsys)
    assert msg.startswith(f"error: MLflow store {uri}: not a kind of store MLflow has (its URI "
                          "must start with http://, https://, sqlite://")
    assert msg.endswith("; set MLFLOW_TRACKING_URI\n")


@pytest.mark.parametrize("everything", [True, False], ids=["login-in-front", "api-only"])
def test_a_server_that_answers_401_is_one_line_naming_the_variables(server, everything, workdir,
                                                                    capsys):
    FakeServer.status = 401 if everything else None
    msg = fails_cleanly(check.main, [], workdir, capsys)
    assert msg == (f"error: MLflow store {server}: GET /api/2.0/mlflow/experiments/get-by-name "
                   "answered 401 Unauthorized (no credentials); set MLFLOW_TRACKING_USERNAME and "
                   "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)\n")


def test_wrong_credentials_and_a_read_only_user_are_refused(server, workdir, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    assert "answered 401 Unauthorized (credentials it refused); set MLFLOW_TRACKING_USERNAME" in \
        fails_cleanly(check.main, [], workdir, capsys)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    msg = fails_cleanly(check.main, [], workdir, capsys)
    assert msg.startswith(f"error: MLflow store {server}: POST /api/2.0/mlflow/experiments/create "
                          "answered 403 Forbidden (these credentials may not write to experiment "
                          "'knowledge-distillation'); set MLFLOW_TRACKING_USERNAME")


def test_a_writer_gets_or_creates_the_experiment_and_passes(server, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    check.main([])
    assert FakeServer.experiments == {"knowledge-distillation": "1"}
    check.main([])  # it exists now: read, then a tag written
    assert FakeServer.calls[-2:] == ["GET /api/2.0/mlflow/experiments/get-by-name",
                                     "POST /api/2.0/mlflow/experiments/set-experiment-tag"]


def test_a_sqlite_store_that_fails_its_integrity_check_is_one_line(workdir, monkeypatch, capsys):
    db = workdir.parent / f"{workdir.name}-store.db"
    con = sqlite3.connect(db)
    con.execute("create table t (x)")
    con.execute("create index i on t (x)")
    con.executemany("insert into t values (?)", [(i * 7919 % 100003,) for i in range(20000)])
    con.commit()
    con.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.delenv("KD_TRACKING", raising=False)
    check.main([])  # intact: passes
    data = bytearray(db.read_bytes())
    start = len(data) - 3 * 4096 + 100  # inside one of the index's pages
    data[start:start + 200] = b"\xff" * 200
    db.write_bytes(bytes(data))
    msg = fails_cleanly(check.main, [], workdir, capsys)
    assert msg.startswith(f"error: MLflow store sqlite:///{db}: fails SQLite's integrity check "
                          "(*** in database main *** On tree page")
    assert msg.endswith("or set MLFLOW_TRACKING_URI\n")
