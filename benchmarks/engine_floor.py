"""The engine floor: Debian's bzImage decompressor on the bare Unicorn, with one empty
native block hook, under `--mode emulate`, and QEMU TCG to the kernel's banner (issue 19).

Usage:
    python benchmarks/engine_floor.py [--rounds 5] [--configs bare,hooked,emulate,qemu,...]
                                      [--mem 64] [--json FILE] [--count N]

Every configuration starts the same guest the same way `bt-run linux` does
(bt/images/bootproto.py: the bzImage's protected-mode code at its load
address, the boot protocol's register and segment state, runtime/vm.py
`_load`) and runs the guest's own xz decompressor up to the decompressed
kernel's entry (`kernel_entry`: where head_32.S's `jmp *%eax` goes):

  bare      a fresh Unicorn with the same RAM, GDT and registers and only
            Python in/out hooks (the decompressor's serial messages: a few
            hundred port accesses, far off the hot path), `emu_start(entry,
            until=kernel_entry)` -- in two steps, because the decompressor
            itself starts at the kernel's load address: first until the code
            has left the image it was loaded as (a Python block hook on the
            addresses above the image, which fires once, at its relocated copy),
            then until the kernel's entry.
  hooked    bare plus one native UC_HOOK_BLOCK on all code whose callback is
            libc's abs(): the price of calling a C function at every block.
  emulate   `api.make_vm(load_cached_linux(mem), "emulate", max_instructions=K)`
            with K the instructions before the kernel's entry (found by a
            calibration run: `--count` skips it), `VM.run` timed: what bt-run pays.
  qemu      `qemu-system-i386 -kernel` (benchmarks/linux_vs_qemu.py's command),
            CPU to the kernel's banner ("Linux version": SeaBIOS, the
            decompressor and the kernel's first steps); `qemu-icount` the same
            with `-icount shift=0` (deterministic instruction counting),
            `qemu-single` with `-accel tcg,thread=single`.

Each run is its own process; rounds interleave the configurations; the
figures are medians of CPU seconds (`time.process_time()` around the run
inside the process for bare/hooked/emulate; /proc/PID/stat at the banner
for QEMU).  bare, hooked and emulate must end in the same state: the same
serial bytes, EIP at the kernel's entry and the same general registers;
the script says so or stops.  `LIBUNICORN_PATH=DIR` (the Python binding's
own variable) runs bare/hooked/emulate on another libunicorn build.

Without the cached image (`bt-images fetch linux`) or `qemu-system-i386`
the script prints one line saying what is missing and exits with status 1.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# Boot protocol fields (Documentation/arch/x86/boot.rst) read by kernel_entry.
_KERNEL_ALIGNMENT = 0x230
_RELOCATABLE = 0x234
_PREF_ADDRESS = 0x258
_VERSION = 0x206

CONFIGS = ("bare", "hooked", "emulate", "qemu", "qemu-icount", "qemu-single")
ENGINE_CONFIGS = ("bare", "hooked", "emulate")
REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip")


class BootFacts(NamedTuple):
    """What decides where a 32-bit bzImage's decompressor puts the kernel."""
    load: int               # where the loader put the protected-mode code (code32_start)
    kernel_alignment: int
    relocatable: bool
    pref_address: int       # LOAD_PHYSICAL_ADDR of the build
    vmlinux_entry: int      # the decompressed vmlinux's e_entry (physical)


def kernel_entry(f: BootFacts) -> int:
    """The address the decompressor jumps to (arch/x86/boot/compressed/head_32.S
    and its extract_kernel, Linux 5.x-6.x): the output buffer is the load address rounded up
    to kernel_alignment, but never below LOAD_PHYSICAL_ADDR (pref_address), for a
    relocatable kernel, else LOAD_PHYSICAL_ADDR; `extract_kernel` returns the
    buffer plus the ELF entry's offset from LOAD_PHYSICAL_ADDR."""
    output = f.pref_address
    if f.relocatable:
        align = f.kernel_alignment or 1
        output = max((f.load + align - 1) & -align, f.pref_address)
    return (output + f.vmlinux_entry - f.pref_address) & 0xFFFFFFFF


def boot_facts(path: str, data: bytes, load: int) -> BootFacts:
    """BootFacts of a bzImage loaded at `load` (the vmlinux unpacked on the host to read its entry)."""
    from bt.images.elf import parse_elf
    from bt.images.linux import _unpack_bzimage
    _, vmlinux, _ = _unpack_bzimage(path, data)
    version = struct.unpack_from("<H", data, _VERSION)[0]
    return BootFacts(load=load, kernel_alignment=struct.unpack_from("<I", data, _KERNEL_ALIGNMENT)[0],
                     relocatable=version >= 0x0205 and data[_RELOCATABLE] != 0,
                     pref_address=struct.unpack_from("<Q", data, _PREF_ADDRESS)[0],
                     vmlinux_entry=parse_elf(vmlinux, f"{path} (vmlinux)").entry)


def missing(qemu_needed: bool) -> str | None:
    """One line naming what this machine lacks to run the benchmark, or None."""
    from bt.images.linux_guest import linux_available
    if not linux_available():
        return "engine_floor: the Debian guest is not cached: run `bt-images fetch linux` first"
    if qemu_needed and shutil.which("qemu-system-i386") is None:
        return ("engine_floor: qemu-system-i386 is not installed (`apt-get install qemu-system-x86`), "
                "or leave the qemu configurations out with --configs bare,hooked,emulate")
    return None


# -- the engine configurations (one per process) -----------------------------------
def _image(mem: int):
    from bt.images.linux_guest import load_cached_linux
    return load_cached_linux(mem)


def _target(img) -> int:
    data = Path(img.path).read_bytes()
    return kernel_entry(boot_facts(img.path, data, img.entry))


def _bare_engine(img, mem: int, out: bytearray):
    """A Unicorn in the state runtime/vm.py `_load` leaves for `img` (RAM, GDT,
    CR0, segments, registers), with in/out answered in Python as the VM's UART does
    for polled output: LSR says the transmitter is empty; other reads return
    what was last written to the port."""
    from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, Uc
    from unicorn import x86_const as X
    from bt.machine import BOOT_CR0, BOOT_EFLAGS, BOOT_GDT_ADDR, flat_gdt_bytes
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, mem << 20)
    for seg in img.segments:
        uc.mem_write(seg.addr, seg.data)
        if seg.memsize > len(seg.data):
            uc.mem_write(seg.addr + len(seg.data), bytes(seg.memsize - len(seg.data)))
    gdt = flat_gdt_bytes(img.boot_cs, img.boot_ds)
    uc.mem_write(BOOT_GDT_ADDR, gdt)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, BOOT_GDT_ADDR, len(gdt) - 1, 0))
    uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
    uc.reg_write(X.UC_X86_REG_CR0, BOOT_CR0)
    uc.reg_write(X.UC_X86_REG_CS, img.boot_cs)
    for r in (X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
        uc.reg_write(r, img.boot_ds)
    regs = {n: 0 for n in REGS if n != "eip"}
    regs.update(img.regs)
    for name, val in regs.items():
        uc.reg_write(getattr(X, f"UC_X86_REG_{name.upper()}"), val & 0xFFFFFFFF)
    uc.reg_write(X.UC_X86_REG_EFLAGS, BOOT_EFLAGS)
    ports: dict[int, int] = {}
    io_count = [0]

    def on_in(uc, port, size, user):
        io_count[0] += 1
        return 0x60 if port == 0x3FD else ports.get(port, 0xFF)    # THRE | TEMT

    def on_out(uc, port, size, value, user):
        io_count[0] += 1
        ports[port] = value
        if port == 0x3F8 and not ports.get(0x3FB, 0) & 0x80:    # THR, DLAB clear
            out.append(value & 0xFF)

    uc.hook_add(UC_HOOK_INSN, on_in, None, 1, 0, X.UC_X86_INS_IN)
    uc.hook_add(UC_HOOK_INSN, on_out, None, 1, 0, X.UC_X86_INS_OUT)
    return uc, io_count


def run_engine(config: str, mem: int, count: int | None) -> dict:
    """One configuration in this process: CPU seconds of the run and its end state."""
    from unicorn import UC_HOOK_BLOCK
    from unicorn import x86_const as X
    img = _image(mem)
    target = _target(img)
    if config == "emulate":
        from bt import api
        vm = api.make_vm(img, "emulate", max_instructions=count)
        t0 = time.process_time()
        res = vm.run()
        cpu = time.process_time() - t0
        return {"config": config, "cpu": round(cpu, 3), "target": target, "retired": res.retired,
                "serial_sha": hashlib.sha256(res.serial).hexdigest()[:16], "serial_bytes": len(res.serial),
                "regs": {n: vm.uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}")) for n in REGS},
                "outcome": str(res.reason)}
    out = bytearray()
    uc, io_count = _bare_engine(img, mem, out)
    t0 = time.process_time()
    if config == "hooked":
        from runtime.fastuc import hook_add
        # libc's abs(int): a C function that reads its first argument and returns;
        # as a block callback (uc, address, size, user) it does nothing.
        fn = ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value
        hook_add(uc, UC_HOOK_BLOCK, fn, None, 1, 0)
    code_end = max(s.end for s in img.segments if s.addr == img.entry)
    left = []

    def on_left(uc, address, size, user):
        left.append(address)
        uc.emu_stop()

    # Step 1: until the first block above the loaded image (the relocated copy).
    h = uc.hook_add(UC_HOOK_BLOCK, on_left, None, code_end, 0xFFFFFFFF)
    uc.emu_start(img.entry, 0)
    uc.hook_del(h)
    uc.ctl_flush_tb()           # no block keeps a call into the removed hook
    if not left:
        raise SystemExit(f"engine_floor: the decompressor never left its image (EIP {uc.reg_read(X.UC_X86_REG_EIP):#x})")
    uc.emu_start(left[0], target)
    cpu = time.process_time() - t0
    return {"config": config, "cpu": round(cpu, 3), "target": target, "relocated_at": left[0],
            "serial_sha": hashlib.sha256(bytes(out)).hexdigest()[:16], "serial_bytes": len(out),
            "regs": {n: uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}")) for n in REGS},
            "io": io_count[0]}


def calibrate(mem: int) -> int:
    """Instructions the VM under emulate retires before the kernel's entry: a
    Python block hook on that one address (it runs twice: the decompressor starts
    there too) reads the clock's count at its second run."""
    from unicorn import UC_HOOK_BLOCK
    from bt import api
    img = _image(mem)
    target = _target(img)
    vm = api.make_vm(img, "emulate", max_instructions=4_000_000_000)
    seen: list[int] = []

    def on_entry(uc, address, size, user):
        seen.append(vm.retired + vm.clock.started(address) - 1)
        if len(seen) == 2:
            vm.config.max_instructions = seen[1]        # ends the run at the next slice end

    vm.uc.hook_add(UC_HOOK_BLOCK, on_entry, None, target, target)
    vm.run()
    if len(seen) < 2:
        raise SystemExit("engine_floor: calibration: the kernel's entry was not reached")
    return seen[1]


# -- QEMU -----------------------------------------------------------------------
def qemu_run(variant: str, mem: int, initrd: str, timeout: float) -> dict:
    sys.path.insert(0, os.path.dirname(__file__))
    from linux_vs_qemu import qemu_cmd, timed_run
    from bt.images.fetch import cached_linux_images, default_linux_cmdline
    cmd = qemu_cmd(str(cached_linux_images()["kernel"]), initrd, default_linux_cmdline(mem) + " reboot=k", mem)
    if variant == "qemu-icount":
        cmd += ["-icount", "shift=0"]
    elif variant == "qemu-single":
        cmd[cmd.index("tcg")] = "tcg,thread=single"
    r = timed_run(cmd, timeout)
    return {"config": variant, "cpu": r["cpu_to_banner"], "cpu_to_marker": r["cpu_to_marker"]}


def worker(config: str, mem: int, count: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", config, "--mem", str(mem)]
    if count is not None:
        cmd += ["--count", str(count)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"engine_floor: {config} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_same_work(results: list[dict]) -> list[str]:
    """Differences in end state between the engine runs (empty: the same work)."""
    problems = []
    first = results[0]
    for r in results:
        if r["regs"]["eip"] != r["target"]:
            problems.append(f"{r['config']}: EIP {r['regs']['eip']:#x}, not the kernel's entry {r['target']:#x}")
        for key in ("serial_sha",):
            if r[key] != first[key]:
                problems.append(f"{r['config']}: {key} {r[key]} != {first['config']}'s {first[key]}")
        diff = [n for n in REGS if r["regs"][n] != first["regs"][n]]
        if diff:
            problems.append(f"{r['config']}: registers differ from {first['config']}'s: " +
                            ", ".join(f"{n} {r['regs'][n]:#x}/{first['regs'][n]:#x}" for n in diff))
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mem", type=int, default=64)
    ap.add_argument("--count", type=int, help="instructions before the kernel's entry (skips calibration)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per QEMU run")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--worker", choices=ENGINE_CONFIGS + ("calibrate",), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "calibrate":
        print(json.dumps({"count": calibrate(args.mem)}))
        return 0
    if args.worker:
        print(json.dumps(run_engine(args.worker, args.mem, args.count)))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        print(f"engine_floor: unknown configuration(s) {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
        return 1
    problem = missing(any(c.startswith("qemu") for c in configs))
    if problem:
        print(problem)
        return 1
    count = args.count
    if "emulate" in configs and count is None:
        count = worker("calibrate", args.mem, None)["count"]
        print(f"calibration: {count:,} instructions before the kernel's entry", flush=True)
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        initrd = os.path.join(tmp, "bench.cpio")
        if any(c.startswith("qemu") for c in configs):
            sys.path.insert(0, os.path.dirname(__file__))
            from linux_boot import INIT
            from bt.images.fetch import cached_linux_images
            from bt.images.initramfs import build_initramfs
            Path(initrd).write_bytes(build_initramfs(cached_linux_images()["busybox"], INIT))
        for rnd in range(args.rounds):
            for c in configs:
                r = qemu_run(c, args.mem, initrd, args.timeout) if c.startswith("qemu") else \
                    worker(c, args.mem, count)
                runs[c].append(r)
                print(f"round {rnd + 1} {c}: cpu {r['cpu']}" +
                      (f", retired {r['retired']:,}" if "retired" in r else "") +
                      (f", serial {r['serial_bytes']} bytes" if "serial_bytes" in r else ""), flush=True)
            engine = [runs[c][-1] for c in configs if c in ENGINE_CONFIGS]
            problems = check_same_work(engine) if engine else []
            for p in problems:
                print(f"NOT THE SAME WORK: {p}")
            if problems:
                return 1
    med = {c: statistics.median(r["cpu"] for r in rs if r["cpu"] is not None)
           if any(r["cpu"] is not None for r in rs) else None for c, rs in runs.items()}
    base = med.get("qemu")
    print(f"\n{'configuration':<14} {'median CPU s':>12} {'x qemu':>7}   rounds")
    for c in configs:
        ratio = f"{med[c] / base:.2f}" if base and med[c] else "-"
        print(f"{c:<14} {med[c] if med[c] is not None else '-':>12} {ratio:>7}   " +
              " / ".join(str(r["cpu"]) for r in runs[c]))
    lib = os.environ.get("LIBUNICORN_PATH")
    print(f"libunicorn: {lib or 'the installed binding'}; kernel entry {runs[configs[0]][0].get('target', 0):#x}"
          + (f"; {count:,} instructions" if count else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"count": count, "libunicorn": lib, "runs": runs, "medians": med}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
