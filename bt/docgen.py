"""The `--doc` / `--check` command of a module that generates documentation
from its own table (bt/catalog.py -> docs/sensitive-instructions.md,
bt/outcome.py -> the exit-status table in docs/cli.md), written once.

`render(old)` returns the document's new full text from its current text
(None when the file does not exist yet); it may raise ValueError when the
current text cannot take the generated part (e.g. its markers are missing).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Callable


def doc_command(argv: list[str] | None, *, module: str, default_path: str,
                render: Callable[[str | None], str], what: str,
                show: Callable[[], str] | None = None) -> int:
    """Without flags print `show()` (default: the rendered document)."""
    prog = f"python -m {module}"
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    p.add_argument("--doc", nargs="?", const=default_path, metavar="PATH",
                   help=f"write {what} into PATH (default {default_path})")
    p.add_argument("--check", action="store_true", help=f"exit 1 when {what} in PATH is stale")
    a = p.parse_args(argv)
    path = pathlib.Path(a.doc or default_path)
    if show is not None and not a.doc and not a.check:
        print(show())
        return 0
    try:
        old = path.read_text() if path.exists() else None
        new = render(old)
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if a.check:
        if new != old:
            print(f"{path} is stale: run `{prog} --doc`", file=sys.stderr)
            return 1
        return 0
    if not a.doc:
        sys.stdout.write(new)
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
    print(f"wrote {path}")
    return 0
