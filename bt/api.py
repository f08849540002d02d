"""The public Python API: what notebooks and scripts use (docs/api.md).

Everything here is built on the objects the commands use (bt.images, runtime.vm,
scanner, patcher); nothing is re-implemented.  Three groups:

* running: `load`, `code_image`, `make_vm`, `run` (optionally sampling
  counters every N instructions for a timeline), `compare_modes` (one row per
  image and mode), `fidelity` (the `bt-run --compare` check);
* code discovery and patching: `scan`, `plan_patches`, and after a bt run
  `result.cfg`, `result.patches`, `result.guards`;
* CFG helpers for drawing (networkx only, no plotting library): `functions`,
  `function_of`, `cfg_subgraph`, `cfg_layout`, `site_table`.

Bad input raises bt.errors.BadInput with a one-line message, as everywhere.
"""
from __future__ import annotations

import functools
import inspect
import io
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx

from bt.errors import BadInput
from bt.images.image import GuestImage
from bt.machine import DEFAULT_CPU_MHZ, DEFAULT_MEM_MIB, MachineConfig
from bt.mode import MODES, Mode  # noqa: F401  (MODES: part of the API, reference first)
from bt.outcome import Outcome
from runtime.vm import RunResult as _VMRunResult
from scanner.cfg import CFG, UNRESOLVED  # noqa: F401  (UNRESOLVED: the node drawn for unknown targets)

# Counters sampled into a timeline (runtime/counters.py says what each means);
# keyed counters are summed over their keys.
TIMELINE_COUNTERS = ("exits", "io_exits", "scan_exits", "stub_exits", "faults_emulated",
                     "faults_reflected", "interrupts_injected", "exceptions_delivered",
                     "cpuid_exits", "halts")
# bt mode's own statistics (runtime/counters.py CSAM_STATS) sampled as well.
TIMELINE_BT_STATS = ("faults_before_patching", "faults_after_patching", "int3_exits",
                     "guard_exits", "smc_invalidations")


# -- running -------------------------------------------------------------------------
@dataclass
class RunResult(_VMRunResult):
    """runtime.vm.RunResult plus what a researcher asks next: the mode, the image,
    the timeline (when sampled), and the VM itself (for bt: CFG and patches)."""

    mode: Mode | None = None
    image: str = ""
    timeline: list = field(default_factory=list)
    vm: Any = field(default=None, repr=False, compare=False)

    @property
    def exits(self) -> int:
        return self.counters.get("exits", 0)

    @property
    def exits_per_million(self) -> float:
        return self.exits * 1_000_000 / self.retired if self.retired else 0.0

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def _bt(self):
        if self.mode is not Mode.BT or self.vm is None:
            raise BadInput(f"the {str(self.mode)!r} run has no CFG or patches; run with mode='bt'")
        return self.vm.mode

    @property
    def cfg(self) -> CFG:
        """The CFG the bt run's lazy scanner built (code that actually ran, and what it reached)."""
        return self._bt().cfg

    @property
    def patches(self) -> dict:
        """Installed patches: guest site -> patcher.patches.Patch (kind, name, stub, covered, exits)."""
        return dict(self._bt().patcher.patches)

    @property
    def guards(self) -> dict:
        """int3 guards on unresolved indirect branches: site -> patcher.templates.Insn."""
        return dict(self._bt().guards)

    @property
    def patch_stats(self) -> dict:
        return dict(self.extra.get("patches", {}))

    @property
    def csam_stats(self) -> dict:
        return dict(self.extra.get("csam", {}))

    def stub_listing(self, site: int) -> list[dict]:
        """The stub of the jump patch at `site`, disassembled: one row per stub
        instruction with the guest instruction it translates and, for an exit,
        its kind (emulate | window)."""
        p = self.patches.get(site)
        if p is None or p.kind != "jump":
            raise BadInput(f"no jump patch at {site:#x}")
        import capstone
        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
        code = bytes(self.vm.uc.mem_read(p.stub, p.stub_size))
        rows = []
        for ins in cs.disasm(code, p.stub):
            guest = next((g for lo, hi, g in p.stub_map if lo <= ins.address < hi), None)
            exit_ = p.exits.get(ins.address)
            rows.append({"stub": hex(ins.address), "insn": f"{ins.mnemonic} {ins.op_str}".strip(),
                         "translates": hex(guest) if guest is not None else "",
                         "exit": exit_[0] if exit_ else ""})
        return rows

    def report(self) -> dict:
        """The same JSON document `bt-run --report` writes (docs/cli.md)."""
        from bt.report import build_report
        return build_report(self.vm.image, self.vm.config, self)

    def summary(self) -> dict:
        """One flat row (for a pandas DataFrame): the figures bt-run prints."""
        c = self.counters
        row = {"image": self.image, "mode": self.mode, "status": self.exit_status,
               "reason": self.reason, "retired": self.retired, "exits": self.exits,
               "exits_per_million": round(self.exits_per_million, 3),
               "io_exits": c.get("io_exits", 0),
               "faults_emulated": sum(c.get("faults_emulated", {}).values()),
               "faults_reflected": sum(c.get("faults_reflected", {}).values()),
               "interrupts_injected": sum(c.get("interrupts_injected", {}).values()),
               "scan_exits": c.get("scan_exits", 0),
               "stub_exits": sum(c.get("stub_exits", {}).values()),
               "patches": sum(self.patch_stats.get("installed", {}).values()),
               "wall_seconds": round(self.wall, 3)}
        return row


class _TextSink:
    """Serial output to sys.stdout as text (a notebook's stdout has no .buffer)."""

    def write(self, data: bytes) -> None:
        sys.stdout.write(data.decode("latin-1"))

    def flush(self) -> None:
        sys.stdout.flush()


def load(image: str | GuestImage, *, mem_mib: int = DEFAULT_MEM_MIB, format: str = "auto",
         load: int | None = None, entry: int | None = None, cmdline: str = "",
         initrd: str | None = None, linux_unpack: bool = False,
         modules: list[str] | None = None) -> GuestImage:
    """A guest image: a file path, "demo:NAME", or an already loaded GuestImage.
    `linux_unpack`: a bzImage's kernel is unpacked on the host instead of by its
    own decompressor in the guest (docs/images.md).  `modules`: boot modules
    of a multiboot kernel (files, in order)."""
    if isinstance(image, GuestImage):
        return image
    if not isinstance(image, str):
        raise BadInput(f"image must be a path, 'demo:NAME' or a GuestImage, not {type(image).__name__}")
    from bt.images import load_image
    return load_image(image, format, load=load, entry=entry, mem_bytes=mem_mib << 20,
                      cmdline=cmdline, initrd=initrd, linux_unpack=linux_unpack, modules=modules)


# The keyword options of `make_vm` that `run` and `compare_modes` pass on.
RUN_OPTIONS = ("mem_mib", "cpu_mhz", "max_instructions", "serial_input", "rtc_epoch", "echo",
               "serial_input_interval", "eager_privileged_patches", "hide_patches", "pc_testdev",
               "firmware")


def checked_options(also: tuple[str, ...] = ()):
    """Make an unknown keyword option a one-line BadInput naming the choices
    (Python's own TypeError names none): the options are the function's
    keyword-only parameters plus `also` (what its **options pass on)."""
    def wrap(fn):
        params = inspect.signature(fn).parameters
        named = {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD}
        choices = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY] + list(also)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            for name in kwargs:
                if name not in named and name not in also:
                    raise BadInput(f"unknown option {name!r} (choose from {', '.join(choices)})")
            return fn(*args, **kwargs)
        return call
    return wrap


@checked_options()
def make_vm(image: str | GuestImage, mode: Mode | str = Mode.EMULATE, *,
            mem_mib: int = DEFAULT_MEM_MIB, cpu_mhz: int = DEFAULT_CPU_MHZ,
            max_instructions: int | None = None, serial_input: bytes | None = None,
            rtc_epoch: int | None = None, echo: bool = False,
            serial_input_interval: int | None = None, eager_privileged_patches: bool = True,
            hide_patches: str = "every-page", pc_testdev: bool = False, firmware: str = "none"):
    """A runtime.vm.VM ready to run (what `run` uses; for stepping a guest yourself).

    `serial_input_interval` (instructions between scripted serial input bytes),
    `eager_privileged_patches` (bt: patch patch-privileged rows when scanned; none since cli/sti run natively),
    `hide_patches` (bt: which pages hide patch bytes from guest loads) and
    `pc_testdev` (QEMU's pc-testdev, as `bt-run --pc-testdev`) and `firmware`
    ("none" or "bios": the start state, as `bt-run --firmware`) are the
    MachineConfig fields of the same names."""
    mode = Mode.parse(mode)
    if not 1 <= mem_mib <= 3072:
        raise BadInput(f"mem_mib {mem_mib} must be between 1 and 3072")
    if cpu_mhz <= 0:
        raise BadInput(f"cpu_mhz {cpu_mhz} must be positive")
    if max_instructions is not None and max_instructions <= 0:
        raise BadInput(f"max_instructions {max_instructions} must be positive")
    img = load(image, mem_mib=mem_mib)
    config = MachineConfig(mem_mib=mem_mib, cpu_mhz=cpu_mhz, mode=mode,
                           max_instructions=max_instructions, serial_input=serial_input,
                           serial_input_interval=serial_input_interval,
                           eager_privileged_patches=eager_privileged_patches,
                           hide_patches=hide_patches, pc_testdev=pc_testdev,
                           firmware=firmware)
    if rtc_epoch is not None:
        config.rtc_epoch = rtc_epoch
    from runtime.vm import VM
    return VM(img, config, stdout=_TextSink() if echo else io.BytesIO())


@checked_options(also=RUN_OPTIONS)
def run(image: str | GuestImage, mode: Mode | str = Mode.EMULATE, *,
        sample_every: int | None = None, **options) -> RunResult:
    """Run a guest to its end (or `max_instructions`) and return the result.

    `options`: those of `make_vm` (RUN_OPTIONS); any other is BadInput.  With `sample_every=N` the run is cut into
    budgets of N retired instructions and the counters are sampled after each
    (`result.timeline`, a list of dicts); the guest sees no difference (a budget
    only ends an emulation slice early, and slices are invisible to it).
    """
    if sample_every is not None and sample_every <= 0:
        raise BadInput(f"sample_every {sample_every} must be positive")
    mode = Mode.parse(mode)
    vm = make_vm(image, mode, **options)
    if sample_every is None:
        res = vm.run()
        timeline = []
    else:
        res, timeline = run_sampled(vm, sample_every)
    fields = {k: getattr(res, k) for k in _VMRunResult.__dataclass_fields__}
    return RunResult(**fields, mode=mode, image=vm.image.path, timeline=timeline, vm=vm)


def run_sampled(vm, step: int):
    """Run a VM made by the caller (its own stdout, e.g. a marker watcher) as `run`
    does with `sample_every=step`: (runtime.vm.RunResult, timeline)."""
    import time
    if step <= 0:
        raise BadInput(f"sample_every {step} must be positive")
    wall0 = time.perf_counter()
    limit = vm.config.max_instructions
    timeline = [sample(vm)]
    while True:
        target = vm.retired + step
        vm.config.max_instructions = target if limit is None else min(target, limit)
        res = vm.run()
        timeline.append(sample(vm))
        if res.reason is not Outcome.BUDGET or (limit is not None and vm.retired >= limit):
            break
        vm.stop = None          # only our own budget stopped it: carry on
    vm.config.max_instructions = limit
    res.wall = time.perf_counter() - wall0      # the whole run, not its last budget
    return res, timeline


def sample(vm) -> dict:
    """The counters of a VM now (between runs or slices): one timeline point."""
    c = vm.counters
    point = {"retired": vm.retired, "vtime": vm.vtime}
    for name in TIMELINE_COUNTERS:
        point[name] = c.get(name)
    if vm.mode.name == "bt":
        for name in TIMELINE_BT_STATS:
            point[name] = vm.mode.stats.get(name)
        point["patches"] = len(vm.mode.patcher.patches)
    return point


@checked_options(also=RUN_OPTIONS)
def compare_modes(images: Iterable[str | GuestImage], modes: Iterable[Mode | str] = MODES,
                  **options) -> list[dict]:
    """Run every image under every mode: one `RunResult.summary()` row each, plus
    `serial_matches_emulate` (guest output identical to the emulate run's)."""
    modes = [Mode.parse(m) for m in modes]
    rows = []
    for image in images:
        ref = None
        for mode in modes:
            r = run(image, mode, **options)
            if mode.is_reference:
                ref = r.serial
            row = r.summary()
            row["serial_matches_emulate"] = None if ref is None else r.serial == ref
            rows.append(row)
    return rows


# -- code discovery and patch planning ----------------------------------------------------
def scan(image: str | GuestImage, *, entries: Iterable[int] | None = None,
         idt: tuple[int, int] | None = None, mem_mib: int = DEFAULT_MEM_MIB) -> CFG:
    """Scan an image statically, as `bt-scan` does: from its entry (or `entries`),
    plus every present gate of the IDT at `idt` = (base, limit).  Only the
    image's own bytes are readable, so code a guest builds at run time (its IDT
    handlers installed by code, computed pointers) is found only by a bt run."""
    from scanner.memory import SegmentMemory
    from scanner.scan import Scanner, idt_gates
    img = load(image, mem_mib=mem_mib)
    mem = SegmentMemory.from_image(img, limit=mem_mib << 20)
    sc = Scanner(mem.read)
    sc.scan([img.entry] if entries is None else list(entries), "entry")
    if idt is not None:
        sc.scan_gates(idt_gates(mem.read, *idt))
    return sc.cfg


@dataclass(frozen=True)
class PatchPlan:
    """What bt mode would do with one sensitive site of a CFG.

    action: jump (jump patch into a stub), int3 (int3 patch, VMM emulates on the
    trap), trap (left to fault and be emulated/reflected, as in trap mode),
    covered (translated inside the stub of the jump patch at `by`), none
    (ring compression makes it behave)."""

    site: int
    name: str
    klass: str
    mnemonic: str
    action: str
    covers: tuple[int, ...] = ()
    end: int = 0
    refused: str | None = None
    by: int | None = None


def plan_patches(cfg: CFG, *, eager_privileged: bool = True) -> list[PatchPlan]:
    """Plan, without running, the patches bt mode installs when it scans this
    code: the same policy (patcher.policy.decide) over the same neighbourhood,
    site by site in address order, with the planned patches standing in for
    the installed ones (a site inside a planned jump is `covered`)."""
    from patcher.policy import Action, decide, insn_at, neighbourhood

    planned: dict[int, int] = {}          # site -> end of each planned patch

    def covering(addr: int):
        for site, end in planned.items():
            if site <= addr < end:
                return site
        return None

    out: list[PatchPlan] = []
    for s in sorted(cfg.sensitive_sites(), key=lambda s: s.addr):
        site = insn_at(cfg, s.addr)
        d = decide(site, neighbourhood(cfg, s.addr, covering), eager_privileged=eager_privileged)
        row = (s.addr, s.name, s.klass, s.mnemonic)
        if d.action is Action.NONE and d.refused is not None:
            out.append(PatchPlan(*row, "covered", by=covering(s.addr)))
        elif d.action is Action.JUMP:
            planned[s.addr] = d.end
            out.append(PatchPlan(*row, "jump", tuple(i.addr for i in d.covered), d.end))
        elif d.action is Action.INT3:
            planned[s.addr] = d.end
            out.append(PatchPlan(*row, "int3", (s.addr,), d.end, d.refused.value))
        else:
            out.append(PatchPlan(*row, d.action.value,
                                 refused=d.refused.value if d.refused else None))
    return out


def site_table(cfg: CFG, patches: dict | None = None, guards: dict | None = None) -> list[dict]:
    """One row per sensitive site (and per guarded indirect branch): address,
    catalog name and class, instruction text, and what a bt run did there."""
    rows = []
    patches = patches or {}
    covering = {}
    for p in patches.values():
        for ins in p.covered:
            covering[ins.addr] = p
    for s in sorted(cfg.sensitive_sites(), key=lambda s: s.addr):
        p = covering.get(s.addr)
        if p is None:
            how = ""
        elif p.site == s.addr:
            how = p.kind
        else:
            how = f"covered by {p.site:#x}"
        rows.append({"addr": hex(s.addr), "block": hex(s.block), "name": s.name, "class": s.klass,
                     "insn": f"{s.mnemonic} {s.op_str}".strip(), "patch": how,
                     "stub": hex(p.stub) if p is not None and p.stub else "",
                     "refused": (p.refused or "") if p is not None else ""})
    for a, ins in sorted((guards or {}).items()):
        rows.append({"addr": hex(a), "block": hex(cfg.block_containing(a) or a),
                     "name": "indirect-branch", "class": "control-flow",
                     "insn": f"{ins.mnemonic} {ins.op_str}".strip(), "patch": "guard",
                     "stub": "", "refused": ""})
    return rows


# -- CFG helpers for drawing ----------------------------------------------------------
def functions(cfg: CFG) -> dict[int, list[int]]:
    """Blocks grouped into functions: entry -> sorted block starts.

    Entries are the CFG's entry points and every call target; a function is what
    its entry reaches without following calls (return edges, which join a call
    site to its return address, stay inside).  Entries are taken in address
    order and a block shared by two functions goes to the first; blocks reached
    from no entry (the rest of a page scanned from a fault) start their own."""
    g = cfg.graph
    blocks = cfg.blocks()
    is_block = set(blocks)
    heads = set(a for a in cfg.entries if a in is_block)
    for _, v, d in g.edges(data=True):
        if v in is_block and (d["kind"] == "call" or d.get("also") == "call"):
            heads.add(v)
    owner: dict[int, int] = {}
    out: dict[int, list[int]] = {}

    def claim(head: int) -> None:
        stack = [head]
        while stack:
            b = stack.pop()
            if b in owner or b not in is_block:
                continue
            if b != head and b in heads:
                continue
            owner[b] = head
            out.setdefault(head, []).append(b)
            for _, v, d in g.out_edges(b, data=True):
                if d["kind"] not in ("call", "unresolved"):
                    stack.append(v)

    for h in sorted(heads):
        claim(h)
    for b in blocks:
        if b not in owner:
            heads.add(b)
            claim(b)
    return {h: sorted(bs) for h, bs in sorted(out.items())}


def function_of(cfg: CFG, addr: int) -> int:
    """The entry of the function (as `functions` groups them) holding `addr`."""
    b = cfg.block_containing(addr)
    if b is None:
        raise BadInput(f"{addr:#x} is not inside a scanned block")
    for head, blocks in functions(cfg).items():
        if b in blocks:
            return head
    raise BadInput(f"{addr:#x} belongs to no function")   # unreachable: every block is claimed


def cfg_subgraph(cfg: CFG, lo: int | None = None, hi: int | None = None, *,
                 function: int | None = None, page: int | None = None) -> nx.DiGraph:
    """The part of the CFG to draw: blocks and bad blocks in [lo, hi), or one
    function (by any address inside it), or one 4 KiB page.  The "unresolved"
    node is kept when a kept block has an edge to it."""
    g = cfg.graph
    if function is not None:
        keep = set(functions(cfg)[function_of(cfg, function)])
        keep |= {v for b in keep for v in g.successors(b) if g.nodes[v]["kind"] == "bad"}
    else:
        if page is not None:
            lo, hi = page & ~0xFFF, (page & ~0xFFF) + 0x1000
        lo = 0 if lo is None else lo
        hi = 1 << 32 if hi is None else hi
        if lo >= hi:
            raise BadInput(f"empty address range {lo:#x}-{hi:#x}")
        keep = {n for n, d in g.nodes(data=True)
                if d["kind"] != "unresolved" and d["start"] < hi and max(d["end"], d["start"] + 1) > lo}
    if any(g.has_edge(b, UNRESOLVED) for b in keep):
        keep.add(UNRESOLVED)
    return g.subgraph(keep).copy()


def cfg_layout(graph: nx.DiGraph, cfg: CFG | None = None) -> dict:
    """Positions for drawing: one column per function, blocks top to bottom in
    address order inside it, columns left to right by entry address, wrapped
    into rows of columns so a large CFG stays roughly square.  `graph` is
    `cfg.graph` or a `cfg_subgraph`; pass `cfg` to group by function (without it
    every block is one column)."""
    nodes = [n for n in graph.nodes if n != UNRESOLVED]
    if cfg is not None:
        groups: dict[int, list[int]] = {}
        owner = {b: h for h, bs in functions(cfg).items() for b in bs}
        for n in sorted(nodes):
            groups.setdefault(owner.get(n, n if graph.nodes[n]["kind"] == "bad" else -1), []).append(n)
        # A bad block sits in the column of the block that runs into it.
        for n in [n for n in nodes if graph.nodes[n]["kind"] == "bad" and n in groups]:
            preds = [p for p in graph.predecessors(n) if p in owner]
            if preds:
                groups.pop(n)
                groups.setdefault(owner[preds[0]], []).append(n)
        columns = [sorted(v) for _, v in sorted(groups.items())]
    else:
        columns = [sorted(nodes)] if nodes else []
    per_row = max(1, math.ceil(math.sqrt(len(columns))))
    pos: dict = {}
    top = 0.0
    for r in range(0, len(columns), per_row):
        row = columns[r:r + per_row]
        height = max(len(c) for c in row)
        for x, col in enumerate(row):
            for y, n in enumerate(col):
                pos[n] = (float(x), -(top + y))
        top += height + 1.5
    if UNRESOLVED in graph:
        pos[UNRESOLVED] = (float(min(per_row, max(len(columns), 1))), 0.0)
    return pos


def code_image(code: bytes | str, load: int = 0x100000, *, name: str = "code") -> GuestImage:
    """A raw image of `code` (machine code bytes, or 32-bit assembly text that
    Keystone assembles at `load`), entered at its first byte: for experiments
    with small pieces of code in a notebook."""
    if isinstance(code, str):
        from keystone import Ks, KsError, KS_ARCH_X86, KS_MODE_32
        try:
            enc, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(code, load)
        except KsError as e:
            raise BadInput(f"code does not assemble: {e}") from None
        code = bytes(enc or b"")
    if not code:
        raise BadInput("code is empty")
    from bt.images.image import Segment
    return GuestImage(path=f"code:{name}", format="raw", entry=load,
                      segments=[Segment(load, bytes(code))], name=name)


# -- fidelity ------------------------------------------------------------------------
@checked_options()
def fidelity(image: str | GuestImage, mode: Mode | str = Mode.TRAP, *, locate: bool = True,
             mem_mib: int = DEFAULT_MEM_MIB, cpu_mhz: int = DEFAULT_CPU_MHZ,
             max_instructions: int | None = None, serial_input_interval: int | None = None,
             eager_privileged_patches: bool = True, hide_patches: str = "every-page",
             pc_testdev: bool = False, firmware: str = "none"):
    """Compare a run under `mode` with one under `emulate` (the reference), as
    `bt-run --compare` does (bt/measure/fidelity.py): returns its FidelityReport
    (`verdict` identical | timing-only | divergent, `differences`, `divergence`
    naming the first guest instruction whose observable result differed, `text()`)."""
    from bt.measure.fidelity import compare
    mode = Mode.parse(mode)
    img = load(image, mem_mib=mem_mib)
    config = MachineConfig(mem_mib=mem_mib, cpu_mhz=cpu_mhz, mode=mode,
                           max_instructions=max_instructions,
                           serial_input_interval=serial_input_interval,
                           eager_privileged_patches=eager_privileged_patches,
                           hide_patches=hide_patches, pc_testdev=pc_testdev,
                           firmware=firmware)
    return compare(img, config, mode, locate=locate)
