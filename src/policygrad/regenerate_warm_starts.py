"""Command line: rebuild the shipped warm-start checkpoints (see :mod:`policygrad.pretrained`).

``python -m policygrad.regenerate_warm_starts [TASK ...] [--check] [--out DIR]``
"""

from .pretrained import main

if __name__ == "__main__":
    raise SystemExit(main())
