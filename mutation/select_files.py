"""Rewrite [tool.mutmut] only_mutate in the working copy's pyproject.toml to the files named."""

from __future__ import annotations

import re
import sys
from pathlib import Path


def main() -> None:
    pyproject, files = Path(sys.argv[1]), sys.argv[2:]
    text = pyproject.read_text()
    listed = ",\n".join(f'    "{f}"' for f in files)
    new, count = re.subn(r"only_mutate = \[[^\]]*\]", f"only_mutate = [\n{listed},\n]", text, count=1)
    if count != 1:
        raise SystemExit(f"no only_mutate list in {pyproject}")
    pyproject.write_text(new)


if __name__ == "__main__":
    main()
