"""The execution modes, parsed once at the edges (CLI, bt.api) into a `Mode`.

`Mode` is a `StrEnum`: a member equals, hashes like and serializes to JSON as its
name ("bt"), so callers that pass `mode="bt"` and reports that print the mode see
the strings they always did.
"""
from __future__ import annotations

from enum import StrEnum

from bt.errors import BadInput


class Mode(StrEnum):
    """How the guest kernel runs (docs/architecture.md)."""

    EMULATE = ("emulate", "pure emulation at CPL 0 (reference)")
    TRAP = ("trap", "deprivileged trap-and-emulate")
    BT = ("bt", "binary translation (patching)")

    def __new__(cls, value: str, meaning: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    @classmethod
    def parse(cls, text: "str | Mode") -> "Mode":
        """`text` as a Mode; BadInput with the choices when it names none."""
        if isinstance(text, cls):
            return text
        try:
            return cls(text)
        except ValueError:
            raise BadInput(f"unknown mode {str(text)!r} (choose from {', '.join(cls)})") from None

    @property
    def is_reference(self) -> bool:
        """The mode every other one is compared with (fidelity, bt-bench)."""
        return self is Mode.EMULATE


MODES = tuple(Mode)
# The modes a fidelity check compares with the reference (`bt-run --compare`).
COMPARED_MODES = tuple(m for m in Mode if not m.is_reference)


def describe_modes() -> str:
    """One line for a --mode help text: each mode and what it is."""
    return "; ".join(f"{m}: {m.meaning}" for m in Mode)
