"""Unicorn page protections as the union of what each VMM mechanism needs.

Today one mechanism uses it: the shadow GDT monitors writes to the pages that
hold the guest's descriptor table (a few pages, a few calls per run).  CSAM no
longer does: lazy scanning is the block check in the clock's C hook and code
pages are watched by native write hooks (runtime/csam.py), because mem_protect
costs milliseconds a call.  Reasons are kept per page and the protection is
recomputed from all of them, so a second mechanism could not undo the first's
protection by accident.
"""
from __future__ import annotations

from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE

from bt.x86 import PAGE


class Protections:
    """Changes are *queued* and applied by `commit()` between emulation slices.

    Unicorn's mem_protect on part of a mapped region splits the region and
    re-creates its memory; doing that inside a hook, while a translated block of
    that region runs, crashes the process (seen here: a FETCH_PROT hook that
    re-protected one page of a larger region segfaulted;
    tests/runtime/test_unicorn_facts.py).  So a hook only records the change and
    asks for the slice to end (`on_change`); the run loop commits before the next
    slice.
    """

    def __init__(self, uc, on_change=None):
        self.uc = uc
        self._write_watch: dict[int, set[str]] = {}
        self._pending: set[int] = set()
        self.on_change = on_change
        self.calls = 0          # mem_protect calls made (the report's figure)

    def _apply(self, page: int) -> None:
        self._pending.add(page)
        if self.on_change is not None:
            self.on_change()

    def commit(self) -> bool:
        """Apply queued protection changes (never call from inside a hook)."""
        if not self._pending:
            return False
        for page in sorted(self._pending):
            prot = UC_PROT_READ | UC_PROT_EXEC
            if not self._write_watch.get(page):
                prot |= UC_PROT_WRITE
            self.uc.mem_protect(page, PAGE, prot)
            self.calls += 1
        self._pending.clear()
        return True

    def watch_writes(self, page: int, reason: str, on: bool = True) -> None:
        s = self._write_watch.setdefault(page, set())
        before = bool(s)
        (s.add if on else s.discard)(reason)
        if bool(s) != before:
            self._apply(page)

    def is_pending(self, page: int) -> bool:
        """A change for `page` is queued: Unicorn may still enforce the old protection."""
        return page in self._pending

    def writes_watched(self, page: int, reason: str | None = None) -> bool:
        s = self._write_watch.get(page, ())
        return bool(s) if reason is None else reason in s
