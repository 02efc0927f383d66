"""Validate the book offline: every page builds, every reference, label and citation resolves.

Usage: python tools/check_book.py [--root DIR]

The MyST HTML theme is downloaded from the internet, so ``myst build --html`` cannot run offline. This
script runs ``myst build --site --strict`` instead (which parses every page, resolves cross-references,
equation labels and citations, and checks labels are unique) against a local stub of the theme's
template file, then fails on:

* a non-zero exit from myst;
* any error (⛔) or warning (⚠) line in its log — parse-time problems such as unknown directives are
  printed but not counted by ``--strict``;
* a toc entry that is not an executed ``.ipynb`` with a ``.md`` source beside it.

``project.error_rules`` in myst.yml raises unresolved references and duplicate labels to errors.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STUB = "jtex: v1\ntitle: offline stub of the MyST book theme (validation only)\n"
BAD_LINE = re.compile(r"(⛔|⚠)")
# lines that mention the network and are expected offline
IGNORED = (
    "Update available",
    "Could not check for updates",
)


def find_myst() -> str:
    exe = shutil.which("myst") or shutil.which("myst", path=str(Path(sys.executable).parent))
    if exe is None:
        raise SystemExit("myst (mystmd) is not installed: pip install mystmd  (it needs node on PATH)")
    return exe


def toc_files(myst_yml: Path) -> list[str]:
    return re.findall(r"^\s*-?\s*file:\s*(\S+)\s*$", myst_yml.read_text(encoding="utf-8"), flags=re.M)


def check(root: Path) -> list[str]:
    problems: list[str] = []
    myst_yml = root / "myst.yml"
    if not myst_yml.exists():
        return [f"no myst.yml in {root}"]
    for f in toc_files(myst_yml):
        path = root / f
        if not path.exists():
            problems.append(f"toc entry does not exist: {f}")
        elif path.suffix == ".ipynb" and not path.with_suffix(".md").exists():
            problems.append(f"toc notebook has no .md source beside it: {f}")
    # A real theme downloaded by `myst build --html` is used as it is; otherwise a stub stands in for it
    # during the check and is removed afterwards, so that a later `myst build --html` downloads the real one.
    stub = root / "_build/templates/site/myst/book-theme/template.yml"
    made_stub = not stub.exists()
    if made_stub:
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text(STUB, encoding="utf-8")
    env = dict(os.environ, NO_COLOR="1", FORCE_COLOR="0", CI="true")
    try:
        proc = subprocess.run(
            [find_myst(), "build", "--site", "--strict"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        if made_stub:
            shutil.rmtree(stub.parent)
    log = proc.stdout + proc.stderr
    for line in log.splitlines():
        if BAD_LINE.search(line) and not any(s in line for s in IGNORED):
            problems.append(line.strip())
    if proc.returncode != 0:
        problems.append(f"myst build --site --strict exited with {proc.returncode}")
    if "Built" not in log:
        problems.append("myst built no page; its log:\n" + log[-2000:])
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args(argv)
    problems = check(args.root.resolve())
    if problems:
        print("book check FAILED:")
        for p in problems:
            print("  " + p)
        return 1
    print("book check passed: all pages build; references, labels and citations resolve")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
