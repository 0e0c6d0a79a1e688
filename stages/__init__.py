"""The pipeline's stages, one module each, run as `python -m stages.<name>` (see dvc.yaml).

Importing this package sets the numerics that params.yaml's `numerics` asks for, and how idle
compute threads wait, before any stage module imports torch: the kernel libraries read them when
first used or loaded (kd/process/numerics.py, kd/process/wait_policy.py).
When it is imported to run a stage (`python -m`: sys.argv[0] is "-m" until the module starts), it
also makes a stop signal end the stage cleanly, from the very first import (kd/process/interrupt.py); a
test that imports a stage keeps Python's own handling.
"""

import sys

from kd.process import interrupt, numerics, wait_policy

numerics.prepare()
wait_policy.prepare()
if sys.argv[:1] == ["-m"]:
    interrupt.install()
