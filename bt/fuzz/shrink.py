"""Shrink a diverging program to a minimal one that still diverges the same way.

Delta debugging over two levels: first whole statements (each with its
out-of-line code), then single body lines inside the remaining statements.  A
candidate is kept when it assembles and `still_diverges(candidate)` holds; by
default that means the differential run shows every difference kind the
original showed in the guest-visible set (differential.GUEST_KINDS), or the
same kinds when the original only differed in "retired".
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from bt.errors import BadInput
from bt.fuzz.differential import run_program
from bt.fuzz.generator import Program


def same_divergence(original, **run_options) -> Callable[[Program], bool]:
    """A `keep` predicate: the candidate assembles and its Difference has the same
    signature as `original` (same guest-visible kinds, same ends of both runs)."""
    wanted = original.signature()

    def check(program: Program) -> bool:
        try:
            program.image()
        except BadInput:
            return False                 # a deletion broke assembly (a label it needed)
        return run_program(program, **run_options).signature() == wanted
    return check


def _chunks(n: int, parts: int):
    size = max(1, n // parts)
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def shrink_statements(program: Program, keep: Callable[[Program], bool]) -> Program:
    """ddmin over the statement list."""
    stmts = list(program.stmts)
    parts = 2
    while len(stmts) >= 1:
        removed = False
        for lo, hi in _chunks(len(stmts), parts):
            cand = stmts[:lo] + stmts[hi:]
            if keep(program.with_stmts(cand)):
                stmts, removed = cand, True
                parts = max(parts - 1, 2)
                break
        if not removed:
            if parts >= len(stmts):
                break
            parts = min(len(stmts), parts * 2)
    return program.with_stmts(stmts)


def shrink_lines(program: Program, keep: Callable[[Program], bool]) -> Program:
    """Drop single body lines (then single out-of-line lines) one at a time."""
    stmts = list(program.stmts)
    for attr in ("body", "aux"):
        i = 0
        while i < len(stmts):
            j = 0
            while j < len(getattr(stmts[i], attr)):
                lines = getattr(stmts[i], attr)
                trial = replace(stmts[i], **{attr: lines[:j] + lines[j + 1:]})
                cand = stmts[:i] + [trial] + stmts[i + 1:]
                if keep(program.with_stmts(cand)):
                    stmts = cand
                else:
                    j += 1
            i += 1
    return program.with_stmts(stmts)


def shrink(program: Program, keep: Callable[[Program], bool] | None = None, **run_options) -> Program:
    """The smallest program found that still satisfies `keep` (by default: diverges
    as `program` does under run_program(**run_options))."""
    if keep is None:
        diff = run_program(program, **run_options)
        if not diff.kinds:
            raise BadInput("the program does not diverge; nothing to shrink")
        keep = same_divergence(diff, **run_options)
    smaller = shrink_statements(program, keep)
    return shrink_lines(smaller, keep)
