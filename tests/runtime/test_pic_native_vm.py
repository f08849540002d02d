"""A guest taking PIT ticks with interrupts on while its tick handler does
Linux's timer traffic -- the counter-latch command and two reads of channel
0, mask_and_ack_8259A (read IMR, mask IRQ 0, specific or non-specific EOI),
unmask, the slave's mask, and an unclaimed port's probe -- with the native
port I/O (runtime/_iofast.c: timer_latch, "The 8259's mask and EOI",
publish_floating) on and off: the same registers, instruction counts, log
of where each tick landed and what the latched count read, the same figures
per port, and every counter the same but the exits themselves.

The main loop also masks and unmasks IRQ 0 with IF clear while its request
is pending (a write that could change the interrupt line: those exit), so
both sides of the 8259's rule run.
"""
import struct

import pytest

from bt.demos import program_image
from bt.machine import MachineConfig
from runtime.vm import VM

TICKS = 120
LOG = 0x200000

MAIN = """
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 0x20
    mov eax, w_tick
    mov edx, 0x8e
    call set_gate
    call lib_init_pic
    mov eax, 1500
    call lib_init_pit
    xor ebx, ebx
    mov esi, LOG
    sti
w_loop:
    inc ebx
    test ebx, 0x3ff
    jnz w_next
    cli                         # let a tick fall due with IF clear
    mov ecx, 2000
w_wait:
    dec ecx
    jnz w_wait
    in al, 0x21                 # mask and unmask with IRQ 0 pending: both exit
    or al, 1
    out 0x21, al
    and al, 0xfe
    out 0x21, al
    sti
w_next:
    cmp dword ptr [w_ticks], TICKS
    jb w_loop
    cli
    call lib_mask_pic
    xor eax, eax
    ret
w_tick:
    push eax
    push edx
    mov eax, [esp + 8]          # where the tick landed
    mov dword ptr [esi], eax
    xor eax, eax                # latch channel 0, read LSB then MSB
    out 0x43, al
    in al, 0x40
    mov dl, al
    in al, 0x40
    mov dh, al
    movzx edx, dx
    mov dword ptr [esi + 4], edx
    add esi, 8
    in al, 0x21                 # mask_and_ack_8259A
    or al, 1
    out 0x21, al
    test dword ptr [w_ticks], 1
    jz w_specific
    mov al, 0x20                # non-specific EOI
    jmp w_eoi
w_specific:
    mov al, 0x60                # specific EOI, IRQ 0
w_eoi:
    out 0x20, al
    in al, 0x21                 # unmask
    and al, 0xfe
    out 0x21, al
    in al, 0xa1                 # the slave's mask, written back
    out 0xa1, al
    mov dx, 0x279               # ISA PnP's address port: nobody claims it
    mov al, 0x02
    out dx, al
    in al, dx
    add ebx, eax
    inc dword ptr [w_ticks]
    pop edx
    pop eax
    iretd
w_ticks: .long 0
"""

# what the native path is allowed to change: the exits it saves
EXIT_COUNTERS = {"exits", "io_exits", "io_native", "exit_sites"}


def _run(mode: str, native: bool):
    src = MAIN.replace("LOG", hex(LOG)).replace("TICKS", str(TICKS))
    vm = VM(program_image(src, "pic-native"), MachineConfig(mode=mode, mem_mib=8), stdout=None)
    vm.io.c.enabled = native
    r = vm.run()
    log = struct.unpack(f"<{2 * TICKS}I", bytes(vm.uc.mem_read(LOG, 8 * TICKS)))
    return r, log


@pytest.mark.parametrize("mode", ["emulate", "trap", "bt"])
def test_native_timer_traffic_changes_nothing_but_the_exits(mode):
    (on, on_log), (off, off_log) = _run(mode, True), _run(mode, False)
    assert (on.reason, on.exit_status) == (off.reason, off.exit_status) == ("debug-exit", 0), on.message
    assert on.regs == off.regs
    assert (on.retired, on.vtime) == (off.retired, off.vtime)
    assert on_log == off_log
    assert len(set(on_log[0::2])) > 3                   # ticks land all over the loop
    assert len(set(on_log[1::2])) > 3                   # and the latched counts differ
    for name in set(on.counters) | set(off.counters):
        if name not in EXIT_COUNTERS:
            assert on.counters.get(name) == off.counters.get(name), name
    ports = on.counters["io_by_port"]
    assert ports["0x43"] >= TICKS and ports["0x279"] == 2 * TICKS
    assert on.counters["unhandled_port_reads"]["0x279"] == TICKS
    assert on.counters["unhandled_port_writes"]["0x279"] == TICKS
    # Off, every access exits.  On, none of the handler's 12 accesses per
    # tick does (the IRQ 0 request is in service, not in IRR, while it runs),
    # nor do the loop's mask writes in a window where no tick fell due; the
    # ones made with the request pending exit.
    assert off.counters["io_native"] == 0
    saved = off.counters["io_exits"] - on.counters["io_exits"]
    assert saved == on.counters["io_native"] >= 12 * TICKS
    on_sites, off_sites = on.counters["exit_sites"], off.counters["exit_sites"]
    handler = {site for site, n in off_sites.items() if n == TICKS}   # + iretd under trap/bt
    assert len(handler - set(on_sites)) == 12
    windows = [site for site, n in off_sites.items() if n > TICKS]    # in, out, out
    assert len(windows) == 3 and windows[0] not in on_sites
    assert 0 < on_sites[windows[1]] == on_sites[windows[2]] < off_sites[windows[1]]
