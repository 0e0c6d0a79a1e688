"""Serve a logged model as `mlflow models serve` does, refusing requests it cannot mean.

MLflow's scoring server converts a JSON request into the signature's dtype before the model sees
it, and takes whatever it is sent: `true` arrives as the pixel value 1.0, a body of 50 MB is read
whole, and JSON nested 100,000 deep ends in a bare 500 (a RecursionError in its parser). This
puts one check in front of MLflow's own app (`mlflow.pyfunc.scoring_server.init`), on the raw
request, and answers with MLflow's error shape, `{"error_code": ..., "message": ...}`:
- a body larger than --max-bytes: 413, naming the limit;
- JSON nested deeper than the signature's tensor allows (its rank, plus the request's object and
  a named-input object): 400;
- a boolean anywhere in it: 400 (pixels are numbers; MLflow would read true as 1);
everything else goes to MLflow's server as it came, so answers are exactly `mlflow models
serve`'s.

Run: MLFLOW_TRACKING_URI=sqlite:///mlflow.db python -m tools.serve
         --model-uri models:/distilled-student@ship-fashion-mnist -p 5001
"""

from __future__ import annotations

import argparse
import json
import re

MAX_BYTES = 10_000_000  # about 4,000 Fashion-MNIST images as JSON integers
_BOOLEAN = re.compile(rb"\b(?:true|false)\b")  # a quick look; `_has_boolean` decides


class Guard:
    """ASGI middleware: the checks above on POST /invocations, then MLflow's app."""

    def __init__(self, app, max_bytes: int, max_depth: int):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/invocations":
            return await self.app(scope, receive, send)
        body, too_large = bytearray(), False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not too_large:
                body += message.get("body", b"")
                too_large = len(body) > self.max_bytes
                if too_large:
                    body = bytearray()  # read the rest and drop it: the client waits to send it
            if not message.get("more_body"):
                break
        if too_large:
            return await _answer(send, 413, "REQUEST_TOO_LARGE",
                                 f"the request is larger than this server's limit of "
                                 f"{self.max_bytes:,} bytes (tools.serve --max-bytes); send "
                                 "fewer images per request")
        refusal = refuse(bytes(body), self.max_depth)
        if refusal:
            return await _answer(send, 400, "BAD_REQUEST", refusal)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def refuse(body: bytes, max_depth: int) -> str | None:
    """Why a JSON body is refused, or None for MLflow to read. A body that is not JSON is left
    to MLflow (it answers 400 itself, or reads CSV)."""
    try:
        data = json.loads(body)
    except RecursionError:
        return f"the JSON is nested too deep to read; this model takes at most {max_depth} levels"
    except ValueError:
        return None
    depth = _depth(data)
    if depth > max_depth:
        return (f"the JSON is nested {depth} deep; this model's input takes at most {max_depth} "
                "levels (the request object, a named input, then the tensor's dimensions)")
    if _BOOLEAN.search(body) and _has_boolean(data):
        return ("a boolean (true or false) where a number belongs: pixel values are numbers "
                "0..255")
    return None


def _depth(data) -> int:
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _has_boolean(data) -> bool:
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, bool):
            return True
        if isinstance(node, dict | list):
            stack.extend(node.values() if isinstance(node, dict) else node)
    return False


async def _answer(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def max_depth_of(model) -> int:
    """The nesting a request for `model` may have: its input tensor's rank, plus the request's
    object and an object naming the input (MLflow's `{"inputs": {"name": tensor}}` form)."""
    schema = model.metadata.get_input_schema()
    shapes = [len(spec.shape) for spec in schema.inputs] if schema and schema.is_tensor_spec() \
        else [2]  # a column-based signature: records of rows
    return max(shapes) + 2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.serve",
                                 description=__doc__.partition("\n")[0])
    ap.add_argument("-m", "--model-uri", required=True, help="models:/name@alias, runs:/..., a path")
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, default=5001)
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                    help=f"largest request body accepted (default {MAX_BYTES:,}); larger: 413")
    args = ap.parse_args(argv)

    import mlflow.pyfunc
    import uvicorn
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(args.model_uri)
    app = Guard(scoring_server.init(model), args.max_bytes, max_depth_of(model))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
