"""Stage 3: train the student baseline, the small model alone, with plain cross-entropy (see
kd/train/supervised.py). Run: python -m stages.student
"""

from functools import partial

from kd.train import supervised

main = partial(supervised.main, "student", __doc__)

if __name__ == "__main__":
    main()
