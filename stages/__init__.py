"""The pipeline's stages, one module each, run as `python -m stages.<name>` (see dvc.yaml).

Importing this package sets the numerics that params.yaml's `numerics` asks for, before any
stage module imports torch: the kernel libraries read them when first used (kd/numerics.py).
"""

from kd import numerics

numerics.prepare()
