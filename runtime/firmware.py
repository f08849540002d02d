"""`--firmware bios`: the machine as a PC BIOS leaves it for a multiboot loader.

The default machine has no firmware: a guest starts with every device at its
reset state (8259s masked, PIT idle, interrupt vector table and BIOS data area
zero), so nothing interrupts it before it programs a source itself.  The
fuzzer, the demos and every guest written for this machine rely on that.

Under QEMU a multiboot kernel starts after SeaBIOS instead, and test kernels
written for QEMU rely on what SeaBIOS left: kvm-unit-tests' realmode.flat
ends its "sti inhibit" test with `sti; hlt` in real mode and expects the
BIOS's timer interrupt (PIT channel 0 at 18.2 Hz, IRQ 0 unmasked, a handler
in the IVT) to wake it.  `--firmware bios` recreates that state, the parts a
guest can observe through the devices this machine has:

* the 8259 pair initialised as the BIOS does (vectors 0x08-0x0F and
  0x70-0x77, cascade on IR2, 8086 mode), only IRQ 0 and the cascade unmasked;
* PIT channel 0 in mode 2 with count 0 (65,536: 18.2 Hz);
* an interrupt vector table whose every entry points into a small BIOS at
  F000:E000: `iret` for software vectors, end-of-interrupt handlers for the
  IRQ vectors, and for IRQ 0 the BIOS tick (the 32-bit count at 0x46C, then
  `int 0x1C`, whose entry is an `iret`);
* the BIOS data area: COM1's port at 0x400, the equipment word at 0x410 (one
  serial port, an FPU), base memory 640 KiB at 0x413.

Every device is programmed through its own ports (the device model stays the
one definition), before the first instruction and alike in every mode.  No
BIOS services (int 0x10, 0x13, 0x15 ...): their vectors are the `iret`.  The
BIOS bytes are ordinary RAM, writable as shadow RAM would be.  docs/machine.md
"Boot state" describes the choice.
"""
from __future__ import annotations

import struct

from bt.errors import BadInput

# Where the BIOS's code goes: F000:E000, in the 64 KiB below 1 MiB a PC BIOS owns.
BIOS_SEGMENT = 0xF000
BIOS_CODE_OFFSET = 0xE000
BIOS_CODE_ADDR = (BIOS_SEGMENT << 4) + BIOS_CODE_OFFSET
IVT_ADDR, IVT_VECTORS = 0x0, 256
BDA_ADDR = 0x400

MASTER_BASE, SLAVE_BASE = 0x08, 0x70        # the BIOS's vectors for IRQ 0-7 and 8-15
TIMER_VECTOR, USER_TICK_VECTOR = MASTER_BASE, 0x1C
TICKS_ADDR = 0x46C                          # BDA: timer ticks since midnight (dword)

# 16-bit code, hand-encoded (tests/runtime/test_firmware.py disassembles each).
IRET = bytes([0xCF])
EOI_MASTER = bytes([0x50, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0xCF])   # push ax; mov al,20h; out 20h,al; pop ax; iret
EOI_BOTH = bytes([0x50, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF])  # ... out 0A0h,al; out 20h,al ...
TIMER_TICK = bytes([
    0x1E,                           # push ds
    0x50,                           # push ax
    0x31, 0xC0,                     # xor ax, ax
    0x8E, 0xD8,                     # mov ds, ax
    0xFF, 0x06, 0x6C, 0x04,         # inc word [0x46C]
    0x75, 0x04,                     # jnz +4
    0xFF, 0x06, 0x6E, 0x04,         # inc word [0x46E]
    0xCD, USER_TICK_VECTOR,         # int 0x1C
    0xB0, 0x20,                     # mov al, 0x20
    0xE6, 0x20,                     # out 0x20, al (EOI)
    0x58,                           # pop ax
    0x1F,                           # pop ds
    0xCF,                           # iret
])

# Port writes, in order: (port, value).
PIC_INIT = [
    (0x20, 0x11), (0xA0, 0x11),                 # ICW1: edge, cascade, ICW4 follows
    (0x21, MASTER_BASE), (0xA1, SLAVE_BASE),    # ICW2: vector bases
    (0x21, 0x04), (0xA1, 0x02),                 # ICW3: slave on IR2 / slave identity 2
    (0x21, 0x01), (0xA1, 0x01),                 # ICW4: 8086 mode, normal EOI
    (0x21, 0xFA), (0xA1, 0xFF),                 # OCW1: IRQ 0 and the cascade unmasked
]
PIT_INIT = [(0x43, 0x34), (0x40, 0x00), (0x40, 0x00)]  # channel 0, lo/hi, mode 2, count 65,536

COM1_PORT = 0x3F8
EQUIPMENT = 0x0202          # bits 9-11: one serial port; bit 1: a math coprocessor
BASE_MEMORY_KIB = 640


def bios_code() -> tuple[bytes, dict[str, int]]:
    """The BIOS's code and the offset (in segment F000) of each handler."""
    code, offsets = bytearray(), {}
    for name, body in (("iret", IRET), ("eoi_master", EOI_MASTER),
                       ("eoi_both", EOI_BOTH), ("timer", TIMER_TICK)):
        offsets[name] = BIOS_CODE_OFFSET + len(code)
        code += body
    return bytes(code), offsets


def vector_table(offsets: dict[str, int]) -> bytes:
    """256 far pointers (offset, segment): the timer, EOI handlers for the other
    IRQ vectors, `iret` for everything else."""
    handler = {TIMER_VECTOR: "timer"}
    handler.update({v: "eoi_master" for v in range(MASTER_BASE + 1, MASTER_BASE + 8)})
    handler.update({v: "eoi_both" for v in range(SLAVE_BASE, SLAVE_BASE + 8)})
    return b"".join(struct.pack("<HH", offsets[handler.get(v, "iret")], BIOS_SEGMENT)
                    for v in range(IVT_VECTORS))


def data_area() -> bytes:
    """The BIOS data area's first 0x20 bytes as this machine fills them."""
    bda = bytearray(0x20)
    struct.pack_into("<H", bda, 0x00, COM1_PORT)
    struct.pack_into("<H", bda, 0x10, EQUIPMENT)
    struct.pack_into("<H", bda, 0x13, BASE_MEMORY_KIB)
    return bytes(bda)


def memory_layout() -> list[tuple[int, bytes, str]]:
    """(address, bytes, what) of everything the BIOS leaves in RAM."""
    code, offsets = bios_code()
    return [(IVT_ADDR, vector_table(offsets), "interrupt vector table"),
            (BDA_ADDR, data_area(), "BIOS data area"),
            (BIOS_CODE_ADDR, code, "BIOS code")]


def apply_bios_state(vm, image) -> None:
    """Leave `vm` as the BIOS would before jumping to `image` (written already)."""
    for addr, data, what in memory_layout():
        end = addr + len(data)
        for seg in image.segments:
            if seg.addr < end and addr < seg.addr + seg.memsize:
                raise BadInput(f"{image.path}: --firmware bios puts its {what} at "
                               f"{addr:#x}-{end:#x}, where the image has {seg.addr:#x}-"
                               f"{seg.addr + seg.memsize:#x}")
        vm.uc.mem_write(addr, data)
    for port, value in PIC_INIT + PIT_INIT:
        vm.bus.write(port, 1, value)
