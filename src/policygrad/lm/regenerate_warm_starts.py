"""Command line: rebuild the shipped warm-start checkpoints.

The checkpoints are those of `policygrad.lm.pretrained`. Usage:

    python -m policygrad.lm.regenerate_warm_starts [TASK ...] [--check] [--out DIR]

The rebuild runs on the book's reference numeric path (`policygrad.numeric_path`). Its
variables are read when torch initialises, which has happened by the time this module
runs, so a command started without them is re-executed once with them set (values the
user set are kept).
"""

import os
import sys

from .. import numeric_path
from .pretrained import main

if __name__ == "__main__":
    env = dict(os.environ)
    numeric_path.pin(env)  # on a copy: adds only what the environment does not set
    if env != os.environ:
        os.execve(
            sys.executable, [sys.executable, "-m", __spec__.name, *sys.argv[1:]], env
        )
    raise SystemExit(main())
