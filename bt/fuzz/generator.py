"""Seeded random ring-0 programs: `generate(seed, ...)` -> Program.

The same seed, length and feature set always give the same program (one
`random.Random(seed)` drives every choice).  A Program is a list of statements
(features.py) inside the fixed frame of guest.py; `text()` is Keystone assembly
for a raw image at guest.LOAD, `image()` the assembled guest.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from bt.errors import BadInput
from bt.fuzz import guest as G
from bt.fuzz.features import CAUSES, MAKERS, Stmt

FEATURES = tuple(MAKERS)
# ALU work is the glue between the features under test: it is drawn this much
# more often than any other enabled feature.
ALU_WEIGHT = 3


@dataclass
class Program:
    seed: int
    features: tuple[str, ...]
    init_regs: dict[str, int]
    stmts: list[Stmt] = field(default_factory=list)

    def text(self) -> str:
        body = []
        for s in self.stmts:
            body.append(f"# {s.sid}: {s.feature}")
            body += ["    " + line for line in s.body]
        aux = [("    " + line if not line.endswith(":") else line) for s in self.stmts for line in s.aux]
        return "\n".join([G.prelude(self.init_regs), *body, "    jmp fz_epilogue",
                          G.handlers() + G.epilogue(), *aux, "fz_end:", "    nop", ""])

    def body_text(self) -> str:
        """Only the statements (what a reproducer shows)."""
        out = []
        for s in self.stmts:
            out += s.body
            if s.aux:
                out += ["# out of line:"] + s.aux
        return "\n".join(out)

    def with_stmts(self, stmts: list[Stmt]) -> "Program":
        return replace(self, stmts=list(stmts))

    def used_features(self) -> set[str]:
        return {s.feature for s in self.stmts}

    def image(self, name: str | None = None):
        from bt.api import code_image
        return code_image(self.text(), G.LOAD, name=name or f"fuzz-{self.seed}")


# Initial registers of a hand-written or recorded program (from_body): distinct
# values with both halves non-zero, so a 16-bit write that clears an upper half shows.
FIXED_REGS = {"eax": 0xA1B2C3D4, "ebx": 0x5E6F7081, "ecx": 0x92A3B4C5, "edx": 0xD6E7F809,
              "esi": 0x1A2B3C4D, "edi": 0x5F607182}


def from_body(text: str, init_regs: dict[str, int] | None = None) -> Program:
    """A Program whose body is `text` (assembly lines; a line "# out of line:" starts
    the lines placed after the epilogue, as Program.body_text writes them)."""
    body, aux = [], []
    target = body
    for line in text.strip().splitlines():
        line = line.strip()
        if line == "# out of line:":
            target = aux
        elif line and not line.startswith("#"):
            target.append(line)
    if not body:
        raise BadInput("the program body is empty")
    return Program(seed=-1, features=("given",), init_regs=dict(init_regs or FIXED_REGS),
                   stmts=[Stmt(0, "given", body, aux)])


def select_features(include=None, exclude=None) -> tuple[str, ...]:
    """The enabled feature names (all by default), in the canonical order."""
    inc = list(include) if include else list(FEATURES)
    exc = list(exclude or ())
    for name in inc + exc:
        if name not in MAKERS:
            raise BadInput(f"unknown fuzz feature {name!r} (choose from {', '.join(FEATURES)})")
    chosen = tuple(f for f in FEATURES if f in inc and f not in exc)
    if not chosen:
        raise BadInput("no fuzz feature left to generate")
    return chosen


def generate(seed: int, n_statements: int = 12, features=None, exclude=None) -> Program:
    feats = select_features(features, exclude)
    rng = random.Random(seed)
    init = {r: rng.getrandbits(32) for r in ("eax", "ebx", "ecx", "edx", "esi", "edi")}
    weights = [ALU_WEIGHT if f == "alu" else 1 for f in feats]
    stmts = []
    for sid in range(n_statements):
        name = rng.choices(feats, weights)[0]
        stmts.append(MAKERS[name](rng, sid))
    return Program(seed, feats, init, stmts)


def causes_of(features) -> dict[str, tuple[int, ...]]:
    """Issue-15 causes each feature can expose (empty for features bt handles)."""
    return {f: CAUSES[f] for f in features}
