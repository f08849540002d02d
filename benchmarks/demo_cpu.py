"""CPU seconds of demo runs, for comparing trees (docs/benchmarks.md, "bt's speed
after the fidelity work").

Usage:
    python benchmarks/demo_cpu.py TREE [--demos hotflags,timer] [--modes bt] [--runs 3]

TREE is the root of a checkout whose C extensions are built in place (its
`runtime/`, `bt/`, ... are imported from there, not from this file's tree), so
the same command measures an old commit in its own worktree.  Each run is a
fresh VM on `demo:NAME` with 64 MiB of RAM; the figure is `time.process_time()`
around `vm.run()`, which other load on a shared machine disturbs less than wall
time.  Prints the minimum and median per demo and mode."""
import argparse
import io
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("tree")
    p.add_argument("--demos", default="hotflags,timer")
    p.add_argument("--modes", default="bt")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args(argv)
    sys.path.insert(0, a.tree)
    from bt.images import load_image
    from bt.machine import MachineConfig
    from runtime.vm import VM
    for demo in a.demos.split(","):
        for mode in a.modes.split(","):
            cpu = []
            for _ in range(max(1, a.runs)):
                vm = VM(load_image(f"demo:{demo}", mem_bytes=64 << 20), MachineConfig(mode=mode),
                        stdout=io.BytesIO())
                t0 = time.process_time()
                r = vm.run()
                cpu.append(time.process_time() - t0)
            print(f"{a.tree} {demo:9s} {mode:8s} cpu min {min(cpu):.3f} median {statistics.median(cpu):.3f}"
                  f"  retired {r.retired} exits {r.counters['exits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
