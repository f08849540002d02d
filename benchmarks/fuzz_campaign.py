"""Differential fuzzing campaign: random ring-0 programs under emulate and bt.

    python benchmarks/fuzz_campaign.py --programs 200 --seed 1 [--features a,b] [--exclude c]
                                       [--statements 12] [--mode bt] [--shrink] [--max-shrunk 5]
                                       [--wall-limit 5] [--walk-bound N]

Program i uses seed S*1_000_003 + i, so a campaign is reproducible and any one
program can be regenerated alone.  Prints the summary (programs, divergent -- the
retired-instruction count included, it is the guest's virtual time -- and how
many of those differ in the count only, by difference kind, by feature, never finished) and, with --shrink, a minimal reproducer for
the first divergent programs (docs/fidelity.md).  --walk-bound sets how many
instructions one of bt's lazy walks decodes before it defers branch targets
(runtime/csam.py WALK_BOUND): the generated programs are far smaller than the
default bound, so a bound of 1 or 2 is what puts deferred branches under test.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bt.errors import BadInput  # noqa: E402
from bt.fuzz.differential import run_program  # noqa: E402
from bt.fuzz.generator import FEATURES, generate, select_features  # noqa: E402
from bt.fuzz.shrink import shrink  # noqa: E402

SEED_STRIDE = 1_000_003


def program_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def campaign(programs: int, seed: int, features=None, exclude=None, statements: int = 12,
             mode: str = "bt", do_shrink: bool = False, max_shrunk: int = 5, wall_limit: float = 5.0,
             out=sys.stdout) -> dict:
    feats = select_features(features, exclude)
    by_kind, by_feature, shrunk = Counter(), Counter(), []
    divergent = retired_only = unfinished = 0
    t0 = time.perf_counter()
    for i in range(programs):
        prog = generate(program_seed(seed, i), statements, feats)
        diff = run_program(prog, mode, wall_limit=wall_limit)
        by_kind.update(diff.kinds)
        if diff.guest_visible:
            divergent += 1
            retired_only += diff.kinds == ("retired",)
            by_feature.update(prog.used_features())
            unfinished += diff.unfinished
            print(f"program {i} (seed {prog.seed}): {diff.text()[:200]}", file=out)
            if do_shrink and len(shrunk) < max_shrunk:
                small = shrink(prog, mode=mode, wall_limit=wall_limit)
                shrunk.append((i, prog.seed, small, run_program(small, mode, wall_limit=wall_limit)))
    summary = {"programs": programs, "divergent": divergent, "retired_only": retired_only,
               "unfinished": unfinished, "by_kind": dict(by_kind), "by_feature": dict(by_feature),
               "seconds": round(time.perf_counter() - t0, 1), "shrunk": shrunk}
    print(f"\nfeatures: {', '.join(feats)}", file=out)
    print(f"programs: {programs}  divergent (guest-visible): {divergent}  never finished: {unfinished}"
          f"  of them in the retired count only: {retired_only}  ({summary['seconds']} s)", file=out)
    print("by difference kind: " + (", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "none"),
          file=out)
    if by_feature:
        print("features in divergent programs: "
              + ", ".join(f"{k} {n}" for k, n in by_feature.most_common()), file=out)
    for i, pseed, small, diff in shrunk:
        print(f"\n--- program {i} (seed {pseed}) shrunk to {len(small.stmts)} statement(s): {diff.text()[:300]}",
              file=out)
        print(small.body_text(), file=out)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--features", help=f"comma-separated subset of: {', '.join(FEATURES)}")
    ap.add_argument("--exclude", help="comma-separated features to leave out")
    ap.add_argument("--statements", type=int, default=12, help="statements per program")
    ap.add_argument("--mode", default="bt", choices=("bt", "trap"))
    ap.add_argument("--shrink", action="store_true", help="shrink divergent programs to minimal ones")
    ap.add_argument("--max-shrunk", type=int, default=5)
    ap.add_argument("--wall-limit", type=float, default=5.0,
                    help="seconds before a run that retires nothing (an exit loop) counts as never finished")
    ap.add_argument("--walk-bound", type=int, default=None,
                    help="instructions one bt lazy walk decodes before deferring branch targets "
                         "(default: runtime/csam.py WALK_BOUND)")
    a = ap.parse_args(argv)
    if a.walk_bound is not None:
        if a.walk_bound <= 0:
            print("error: --walk-bound must be positive", file=sys.stderr)
            return 2
        import runtime.csam
        runtime.csam.WALK_BOUND = a.walk_bound
    if a.programs <= 0 or a.statements <= 0 or a.wall_limit <= 0:
        print("error: --programs, --statements and --wall-limit must be positive", file=sys.stderr)
        return 2
    try:
        s = campaign(a.programs, a.seed, _names(a.features), _names(a.exclude), a.statements,
                     a.mode, a.shrink, a.max_shrunk, a.wall_limit)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if s["divergent"] else 0


if __name__ == "__main__":
    sys.exit(main())
