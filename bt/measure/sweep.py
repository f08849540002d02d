"""Sweep dimensions of the `bt-bench` matrix: `--sweep NAME=V1,V2,...` over the
machine's `cpu_mhz` and the cost model's parameters (bt/costmodel.py).

A point is one value per dimension; the points are the cartesian product of the
dimensions in the order given (the last varies fastest), and that is the row
order within a guest.  The two kinds of dimension cost very differently:
`cpu_mhz` changes the run itself (virtual time, so timer interrupts, per
instruction), so each of its values is a run of every mode; a cost parameter
only changes how counted events are priced, so one run is priced at every cost
point (bt/measure/bench.py `guest_rows`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace

from bt import costmodel
from bt.errors import BadInput

MACHINE_DIMS = ("cpu_mhz",)
COST_DIMS = tuple(f.name for f in fields(costmodel.CostParams))


def _value(name: str, text: str, item: str):
    try:
        v = int(text) if name in MACHINE_DIMS else float(text)
    except ValueError:
        kind = "an integer" if name in MACHINE_DIMS else "a number"
        raise BadInput(f"--sweep: '{text}' is not {kind} (in '{item}')") from None
    if name in MACHINE_DIMS and v <= 0:
        raise BadInput(f"--sweep: {name} must be positive (in '{item}')")
    if v < 0 or v != v or v in (float("inf"), float("-inf")):
        raise BadInput(f"--sweep: {name} must be a finite non-negative number (in '{item}')")
    return v


@dataclass(frozen=True)
class Sweep:
    """The matrix dimensions beyond guest and mode: (name, values) pairs."""

    dims: tuple[tuple[str, tuple], ...] = ()

    @classmethod
    def parse(cls, items: list[str] | None) -> "Sweep":
        """From the `--sweep` option values ('NAME=V1,V2,...', one per dimension)."""
        dims: list[tuple[str, tuple]] = []
        for item in items or []:
            name, sep, vals = item.partition("=")
            name = name.strip()
            if not sep or name not in MACHINE_DIMS + COST_DIMS:
                raise BadInput(f"--sweep: '{item}' is not NAME=V1,V2,... with NAME one of "
                               f"{', '.join(MACHINE_DIMS + COST_DIMS)}")
            if any(n == name for n, _ in dims):
                raise BadInput(f"--sweep: {name} is swept twice")
            texts = [t.strip() for t in vals.split(",")]
            if not vals.strip() or "" in texts:
                raise BadInput(f"--sweep: '{item}' has an empty value")
            values = tuple(_value(name, t, item) for t in texts)
            if len(set(values)) != len(values):
                raise BadInput(f"--sweep: '{item}' names a value twice")
            dims.append((name, values))
        return cls(tuple(dims))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.dims)

    def points(self) -> list[dict]:
        """Every point, in row order: {name: value} ({} once when nothing is swept)."""
        return [dict(zip(self.names, vals))
                for vals in itertools.product(*(v for _, v in self.dims))]

    def machine_points(self) -> list[dict]:
        """The distinct machine settings (one set of runs each), in row order."""
        out: list[dict] = []
        for p in self.points():
            m = {n: v for n, v in p.items() if n in MACHINE_DIMS}
            if m not in out:
                out.append(m)
        return out

    def apply(self, config, params: costmodel.CostParams, point: dict):
        """(config, params) at `point`; the caller's objects are untouched."""
        machine = {n: v for n, v in point.items() if n in MACHINE_DIMS}
        cost = {n: float(v) for n, v in point.items() if n in COST_DIMS}
        return (replace(config, **machine) if machine else config,
                replace(params, **cost) if cost else params)

    def check_overrides(self, cost_text: str | None, cpu_mhz_given: bool) -> None:
        """A parameter fixed by --cost or --cpu-mhz cannot also be swept."""
        fixed = {item.partition("=")[0].strip() for item in (cost_text or "").split(",") if item}
        if cpu_mhz_given:
            fixed.add("cpu_mhz")
        both = [n for n in self.names if n in fixed]
        if both:
            opt = "--cpu-mhz" if both[0] == "cpu_mhz" else "--cost"
            raise BadInput(f"--sweep: {both[0]} is also fixed by {opt}; give it one way")
