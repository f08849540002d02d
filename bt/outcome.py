"""How a run ends: one `Outcome` per reason, each with its bt-run exit status.

Every layer reads this one table: the runtime stops a run with a `RunStop`
(outcome, status, message), devices ask for one through `request_stop`, the CLI
exits with its status, the JSON report writes the outcome's value as `reason`,
and the exit-status table of docs/cli.md is generated from it
(`python -m bt.outcome --doc`; tests/bt/test_outcome.py checks it is fresh).

`Outcome` is a `StrEnum`: a member is equal to, hashes like, formats as and
serializes to JSON as its value ("hang"), so reports and printed lines are the
strings they always were.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from bt.errors import VMMError
from bt.interrupt import STOP_SIGNALS, signal_name, status_for

# bt-run exit statuses shared by several outcomes.
STATUS_OK = 0
STATUS_BUDGET = 124
STATUS_HANG = 125
STATUS_VMM_ERROR = VMMError.exit_status


class StatusFrom(StrEnum):
    """Who chooses an outcome's exit status."""

    OUTCOME = "outcome"     # always the outcome's own `status`
    GUEST = "guest"         # the value the guest wrote (debug exit); `status` is the default
    SIGNAL = "signal"       # 128 + the stop signal's number (bt/interrupt.py)


# The statuses a signal-chosen outcome may carry: 130 (SIGINT), 143 (SIGTERM).
SIGNAL_STATUSES = {status_for(s): signal_name(s) for s in STOP_SIGNALS}


class Outcome(StrEnum):
    """Why a run ended.  `status` is the exit status bt-run returns for it unless
    `status_from` says the guest or a signal chose it, when `status` is only the
    default (the `RunStop` carries the actual one)."""

    DEBUG_EXIT = ("debug-exit", STATUS_OK, StatusFrom.GUEST,
                  "the guest wrote v to port 0xF4 (the demos write 0 on success)")
    QUIT = ("quit", STATUS_OK, StatusFrom.OUTCOME,
            "the user ended the run: Ctrl-A x on the interactive console, or `kill` "
            "from gdb (`bt-run --gdb`)")
    RESET = ("reset", STATUS_OK, StatusFrom.OUTCOME,
             "the guest reset the machine: the keyboard controller (0xFE to port 0x64, or its "
             "output port's bit 0 cleared) or port 0x92's bit 0 set")
    BUDGET = ("budget", STATUS_BUDGET, StatusFrom.OUTCOME, "`--max-instructions` reached")
    HANG = ("hang", STATUS_HANG, StatusFrom.OUTCOME,
            "the guest halted with nothing to wake it")
    TRIPLE_FAULT = ("triple-fault", STATUS_HANG, StatusFrom.OUTCOME,
                    "an exception could not be delivered (the guest would shut down)")
    UNMAPPED_ACCESS = ("unmapped-access", STATUS_HANG, StatusFrom.OUTCOME,
                       "the guest touched physical memory outside RAM (in trap/bt the "
                       "hypervisor area too: it is not there for the guest)")
    EMULATION_ERROR = ("emulation-error", STATUS_HANG, StatusFrom.OUTCOME,
                       "Unicorn stopped on an error no mode claimed")
    VMM_ERROR = ("vmm-error", STATUS_VMM_ERROR, StatusFrom.OUTCOME,
                 "an internal VMM error or an unsupported situation (e.g. a paging guest "
                 "under bt); the report is still written")
    INTERRUPTED = ("interrupted", status_for(STOP_SIGNALS[0]), StatusFrom.SIGNAL,
                   "stopped by " + " / ".join(SIGNAL_STATUSES.values()) + " (Ctrl-C, kill): "
                   "the run stopped at its next slice boundary; report and summary as usual")

    def __new__(cls, value: str, status: int, status_from, meaning: str):
        member = str.__new__(cls, value)
        member._value_ = value
        member.status = status
        member.status_from = status_from or StatusFrom.OUTCOME
        member.meaning = meaning
        return member

    @property
    def status_from_guest(self) -> bool:
        return self.status_from is StatusFrom.GUEST

    def allows(self, status: int) -> bool:
        """May a run ending with this outcome exit with `status`?"""
        if self.status_from is StatusFrom.GUEST:
            return True
        if self.status_from is StatusFrom.SIGNAL:
            return status in SIGNAL_STATUSES
        return status == self.status

    def status_text(self) -> str:
        """The status column of docs/cli.md's table."""
        if self.status_from is StatusFrom.GUEST:
            return "v"
        if self.status_from is StatusFrom.SIGNAL:
            return "/".join(str(s) for s in SIGNAL_STATUSES)
        return str(self.status)

    def stop(self, message: str = "", status: int | None = None) -> RunStop:
        """The end of a run with this outcome (its own status unless the guest chose one)."""
        return RunStop(self, self.status if status is None else status, message)


@dataclass(frozen=True)
class RunStop:
    """How one run ended: what the VM's `stop` holds once the run is over."""

    outcome: Outcome
    status: int
    message: str = ""

    def __post_init__(self):
        if not isinstance(self.outcome, Outcome):
            raise TypeError(f"RunStop needs an Outcome, not {self.outcome!r}")
        o = self.outcome
        if o.allows(self.status):
            return
        if o.status_from is StatusFrom.OUTCOME:
            raise ValueError(f"{o} always exits with status {o.status}, not {self.status}")
        raise ValueError(f"{o} exits with a status its {o.status_from} chooses "
                         f"({o.status_text()}), not {self.status}")


# ---------------------------------------------------------------------------
# The generated exit-status table of docs/cli.md.

DOC_PATH = "docs/cli.md"
REGEN_COMMAND = "python -m bt.outcome --doc"
BEGIN_MARK = "<!-- exit-status table: generated from bt/outcome.py by `" + REGEN_COMMAND + "` -->"
END_MARK = "<!-- end of generated exit-status table -->"

# Statuses bt-run returns that end no run (so they are not outcomes).
_OTHER_STATUSES = (
    ("2", "", "bad input: unreadable or unrecognised image, bad option value, an output "
              "file that cannot be written (checked before the run)"),
    ("74", "", "the run ended but its `--report` could not be written (summary still printed)"),
    ("0 / 1", "(`--compare`)", "0 identical or timing-only, 1 divergent"),
)


def render_table() -> str:
    """The markdown table: one row per outcome, then the statuses that are not outcomes."""
    lines = ["| status | reason | meaning |", "|---|---|---|"]
    for o in Outcome:
        lines.append(f"| {o.status_text()} | `{o.value}` | {o.meaning} |")
    for status, reason, meaning in _OTHER_STATUSES:
        lines.append(f"| {status} | {reason} | {meaning} |")
    return "\n".join(lines)


def render_doc(text: str) -> str:
    """`text` (docs/cli.md) with the part between the markers replaced by the table."""
    start = text.find(BEGIN_MARK)
    end = text.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"{DOC_PATH} lacks the markers of the exit-status table")
    return text[:start + len(BEGIN_MARK)] + "\n" + render_table() + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    from bt.docgen import doc_command

    def render(old: str | None) -> str:
        if old is None:
            raise ValueError(f"{DOC_PATH} does not exist")
        return render_doc(old)
    return doc_command(argv, module="bt.outcome", default_path=DOC_PATH, render=render,
                       what="the exit-status table", show=render_table)


if __name__ == "__main__":
    raise SystemExit(main())
