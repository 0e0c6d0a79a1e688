"""Stage 2: train the teacher (the big, regularised model) with plain cross-entropy (see
kd/train/supervised.py). Run: python -m stages.teacher
"""

from functools import partial

from kd.train import supervised

main = partial(supervised.main, "teacher", __doc__)

if __name__ == "__main__":
    main()
