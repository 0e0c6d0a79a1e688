"""Ask a served model to classify stored test images, and check its answers against the labels.

Serve the student to ship (the registry alias `ship-<dataset>`, kd/track/model_registry.py), then query it:

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db uv run mlflow models serve \\
        -m models:/distilled-student@ship-fashion-mnist --env-manager local -p 5001
    uv run python -m tools.query --port 5001 -n 20

Sends the first N images of data/<dataset>/test.pt (as stored: whole pixel values 0..255) to
http://<host>:<port>/invocations in MLflow's `inputs` JSON, prints one line per image (predicted
and true class) and the accuracy. Exit status 1 with a one-line message when the server cannot
be reached or answers with an error (its message included).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import torch

from kd.data import splits
from kd.errors import PipelineError


def invoke(url: str, images: list, timeout: float = 60.0) -> list[list[float]]:
    """POST images ((N, C, H, W) nested lists) to an MLflow scoring server; the logits it returns.
    An HTTP error is raised as urllib.error.HTTPError, its body left to read."""
    body = json.dumps({"inputs": images}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())["predictions"]


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.partition("\n")
    ap = argparse.ArgumentParser(prog="python -m tools.query", description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5001)
    ap.add_argument("-n", type=int, default=20, help="how many test images (default: 20)")
    ap.add_argument("--data", type=Path, default=Path("data/fashion-mnist"),
                    help="prepared dataset folder (default: data/fashion-mnist)")
    args = ap.parse_args(argv)

    try:
        ds = splits.load(args.data)
    except PipelineError as e:  # not a prepared dataset, or not the one dvc.lock records
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    x, y = ds.test.x[:args.n], ds.test.y[:args.n]
    url = f"http://{args.host}:{args.port}/invocations"
    try:
        logits = invoke(url, x.tolist())
    except urllib.error.HTTPError as e:
        message = json.loads(e.read() or b"{}").get("message", "")
        print(f"error: {url} answered {e.code}: {' '.join(message.split())[-300:]}", file=sys.stderr)
        raise SystemExit(1) from None
    except (urllib.error.URLError, OSError) as e:
        print(f"error: cannot reach {url} ({getattr(e, 'reason', e)}); is `mlflow models serve` "
              "running on that port?", file=sys.stderr)
        raise SystemExit(1) from None
    predicted = torch.tensor(logits).argmax(1)
    for i, (p, t) in enumerate(zip(predicted.tolist(), y.tolist(), strict=True)):
        mark = "" if p == t else "  <- wrong"
        print(f"{i:5d}  predicted {ds.classes[p]:<12}  true {ds.classes[t]:<12}{mark}")
    right = int((predicted == y).sum())
    print(f"{right}/{len(y)} right ({100 * right / len(y):.1f}%)")


if __name__ == "__main__":
    main()
