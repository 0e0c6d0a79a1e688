"""Whether the MLflow store is there (`probe`, every stage's first look) and usable (`prove`, the
check stage's).

`probe` answers whether something is there, in seconds; a store that answers can still refuse every
stage after DVC has deleted its outputs: a URI MLflow has no store for (`foo://bar`), a server
that wants a login (401) or lets this user read but not write (403), a SQLite file that is
corrupt. `prove` makes the calls a stage makes first, with the credentials the stages will use:
a server is asked for the experiment (a read) and then to create it or tag it (a write); a SQLite
file must pass SQLite's own integrity check. Each refusal is one TrackingError naming the store
and what to set.

A server is spoken to through MLflow's REST API with urllib (the check stays quick: MLflow
itself takes seconds to import), with the variables MLflow's client reads: MLFLOW_TRACKING_TOKEN
(bearer) or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (basic), and
MLFLOW_TRACKING_INSECURE_TLS / MLFLOW_TRACKING_SERVER_CERT_PATH. An authentication plugin
(MLFLOW_TRACKING_AUTH) is not replayed here: with one set, the server is only probed. A
PostgreSQL, MySQL or SQL Server store, or Databricks, passes on its scheme alone: proving it
would need its driver or SDK here; the first stage's call then reports a refusal in one line.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import ssl
import urllib.error
import urllib.parse
import urllib.request

from kd.track import store

# The tracking stores MLflow 3 has: a server, a SQL database through SQLAlchemy (a driver may
# follow the dialect: postgresql+psycopg2), Databricks. MLflow 3.13+ refuses a folder (file:).
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
CHECKED_TAG = "kd.store_checked"  # the write that proves this user may write to the experiment


def probe(uri: str | None = None) -> None:
    """Whether the store answers, in a few seconds: a server's /health, or a SQLite database
    that can be written. Raises TrackingError naming the store; other kinds of URI pass."""
    uri = uri or store.tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=store.CONNECT_SECONDS):
                return
        except urllib.error.HTTPError:
            return  # it answered (a login in front of /health, say): reachable; MLflow goes on
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise store.TrackingError(f"MLflow store {uri}: unreachable ({reason}); start the "
                                      f"server or set MLFLOW_TRACKING_URI") from None
    db = store.sqlite_file(uri)
    if db is None:
        return
    folder = db.parent if db.parent.exists() else next(p for p in db.parents if p.exists())
    if not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise store.TrackingError(f"MLflow store {uri}: not writable; make it writable or set "
                                  f"MLFLOW_TRACKING_URI")
    if db.exists():
        try:
            con = sqlite3.connect(db, timeout=store.CONNECT_SECONDS, isolation_level=None)
            try:
                con.execute("BEGIN IMMEDIATE")  # takes the write lock; released at once
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.Error as e:
            raise store.TrackingError(f"MLflow store {uri}: {type(e).__name__}: {e}") from None


def prove(uri: str | None = None) -> None:
    """Raise TrackingError, one line, unless the stages can use the store at `uri`."""
    uri = uri or store.tracking_uri()
    scheme = uri.partition("://")[0].split("+")[0].lower() if "://" in uri else ""
    if scheme not in SCHEMES:
        raise store.TrackingError(
            f"MLflow store {uri}: not a kind of store MLflow has (its URI must start with "
            f"{', '.join(s + '://' for s in SCHEMES)}); set MLFLOW_TRACKING_URI")
    if scheme in ("http", "https") and not os.environ.get("MLFLOW_TRACKING_AUTH"):
        _server_read_write(uri.rstrip("/"))
    elif scheme == "sqlite":
        _sqlite_intact(uri)


def _server_read_write(base: str) -> None:
    name = store.experiment_label()
    found = _call(base, "GET", "experiments/get-by-name?" +
                  urllib.parse.urlencode({"experiment_name": name}), missing_ok=True)
    if found is None:
        _call(base, "POST", "experiments/create", {"name": name})
    else:
        _call(base, "POST", "experiments/set-experiment-tag", {
            "experiment_id": found["experiment"]["experiment_id"], "key": CHECKED_TAG,
            "value": "true"})


def _call(base: str, method: str, path: str, body: dict | None = None,
          missing_ok: bool = False) -> dict | None:
    """One REST call as the stages' client would make it; None for an absent resource when
    `missing_ok`; any other refusal a TrackingError saying what to set."""
    url = f"{base}/api/2.0/mlflow/{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, method=method, headers={
        "Content-Type": "application/json", **_auth()})
    try:
        with urllib.request.urlopen(request, timeout=store.CONNECT_SECONDS,
                                    context=_tls()) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as e:
        code = json.loads(e.read() or b"{}").get("error_code", "") if _is_json(e) else ""
        if missing_ok and e.code == 404 and code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise store.TrackingError(_refused(base, e.code, e.reason, method, path)) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise store.TrackingError(f"MLflow store {base}: {method} {url.split('?')[0]} failed "
                                  f"({reason}); check MLFLOW_TRACKING_URI") from None


def _refused(base: str, status: int, reason: str, method: str, path: str) -> str:
    what = f"MLflow store {base}: {method} /api/2.0/mlflow/{path.split('?')[0]} answered " \
           f"{status} {reason}"
    if status == 401:
        given = "credentials it refused" if _auth() else "no credentials"
        return f"{what} ({given}); set {CREDENTIALS}"
    if status == 403:
        return (f"{what} (these credentials may not write to experiment "
                f"{store.experiment_label()!r}); set {CREDENTIALS} to a user with EDIT "
                f"permission, or MLFLOW_EXPERIMENT_NAME to an experiment it may write")
    return f"{what}; is MLFLOW_TRACKING_URI an MLflow tracking server?"


def _is_json(e: urllib.error.HTTPError) -> bool:
    return "json" in (e.headers.get("Content-Type") or "")


def _auth() -> dict:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get("MLFLOW_TRACKING_USERNAME"),
                      os.environ.get("MLFLOW_TRACKING_PASSWORD"))
    if user or password:
        pair = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def _tls() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()  # noqa: S323 - the user asked MLflow for this
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def _sqlite_intact(uri: str) -> None:
    """SQLite's integrity check on an existing store: a corrupt database (a disk that failed, a
    copy taken mid-write) is refused before any stage writes more into it."""
    db = store.sqlite_file(uri)
    if db is None or not db.is_file():
        return  # the first stage creates it
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True,
                              timeout=store.CONNECT_SECONDS)
        try:
            rows = [r[0] for r in con.execute("PRAGMA integrity_check(5)")]
        finally:
            con.close()
    except sqlite3.Error as e:
        rows = [f"{type(e).__name__}: {e}"]
    if rows != ["ok"]:
        problem = " ".join(" ".join(str(r) for r in rows).split())[:200]  # SQLite's rows: one line
        raise store.TrackingError(
            f"MLflow store {uri}: fails SQLite's integrity check ({problem}); move the file "
            f"aside and restore a backup (or `sqlite3 {db.name} .recover`), or set "
            f"MLFLOW_TRACKING_URI")
