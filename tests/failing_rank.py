"""The teacher stage with a fault injected into rank 1: its first evaluation raises.

tests/test_distributed.py starts this under torchrun to check that one failing rank fails the
whole stage (non-zero exit, no hang, no output written) while rank 0 waits at a collective.
Run: torchrun --standalone --nproc-per-node 2 tests/failing_rank.py
"""

import os

from kd.train import loop
from stages import teacher

_predict = loop.predict


def predict(*args, **kwargs):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("injected failure on rank 1")
    return _predict(*args, **kwargs)


loop.predict = predict  # kd.train.loop.fit looks the name up when it evaluates each epoch
teacher.main()
