"""NMIs sent to self through the local APIC's ICR, in every mode (runtime/nmi.py):
taken right after the store whatever IF says, through vector 2; a second NMI
sent from inside the handler waits for the handler's iret and is taken at the
boundary right after it (the frame's EIP is the interrupted instruction's
successor, the handler's work done); blocking ends at that iret, so a later
NMI is taken again; and every mode agrees to the instruction."""
import pytest

from bt.demos import program_image
from bt.images.image import GuestImage
from bt.machine import MachineConfig
from runtime.vm import VM

MODES = ("emulate", "trap", "bt")
APIC = 0xFEE00000
ICR_LO = APIC + 0x300
SELF_NMI = 0x400            # physical destination 0 (ICR high 0: this CPU), delivery mode NMI

# The NMI handler (an interrupt gate): ESI counts its runs; the first run
# records the frame's EIP in EDI; with EBP = 1 on entry the first run sends a
# second NMI and spins before it sets EBP = 2 and returns; the second run
# records its frame's EIP in EDX and EBP (2 if the first run had finished) in EBX.
HANDLER = f"""
h_nmi:
    inc esi
    cmp esi, 1
    jne h_nmi_later
    mov edi, dword ptr [esp]
    cmp ebp, 1
    jne h_nmi_done
    mov dword ptr [{ICR_LO:#x}], {SELF_NMI:#x}
    mov ecx, 200
h_spin:
    dec ecx
    jnz h_spin
    mov ebp, 2
h_nmi_done:
    iretd
h_nmi_later:
    mov edx, dword ptr [esp]
    mov ebx, ebp
    iretd
"""


def _image(body: str) -> GuestImage:
    main = f"""
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 2
    mov eax, h_nmi
    mov edx, 0x8e
    call set_gate
    xor esi, esi
    xor edi, edi
    xor edx, edx
    xor ebx, ebx
    xor ebp, ebp
{body}
    cli
    xor eax, eax
    ret
{HANDLER}
"""
    return program_image(main, "nmi")


def _run(body: str, mode: str):
    r = VM(_image(body), MachineConfig(mode=mode, mem_mib=8), stdout=None).run()
    assert r.exit_status == 0, (r.reason, r.message)
    return r


def _lapic(r) -> dict:
    return r.extra.get("mmio", {}).get("devices", {}).get("lapic", {})


# EDI/EDX hold frame EIPs; the body turns them into distances from `after`
# (0: the NMI was taken right after the store, before `after` ran).
ONE_NMI_IF_CLEAR = f"""
    cli
    mov dword ptr [{ICR_LO:#x}], {SELF_NMI:#x}
after:
    sub edi, after
"""

NESTED = f"""
    cli
    mov ebp, 1
    mov dword ptr [{ICR_LO:#x}], {SELF_NMI:#x}
after:
    sub edi, after
    sub edx, after
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_self_nmi_is_taken_with_if_clear_right_after_its_store(mode):
    r = _run(ONE_NMI_IF_CLEAR, mode)
    assert r.regs["esi"] == 1 and r.regs["edi"] == 0
    assert r.counters["interrupts_injected"] == {"0x2": 1}
    assert _lapic(r)["nmis"] == 1 and "unsupported" not in _lapic(r)
    assert r.extra["nmi"]["unblocks"] == 1          # the handler's iretd


@pytest.mark.parametrize("mode", MODES)
def test_an_nmi_sent_in_the_handler_waits_for_its_iret(mode):
    r = _run(NESTED, mode)
    assert r.regs["esi"] == 2                       # both taken
    assert r.regs["ebx"] == 2                       # the second after the first run finished
    assert r.regs["edi"] == 0 and r.regs["edx"] == 0    # both at `after`: right after the iretd
    assert r.counters["interrupts_injected"] == {"0x2": 2}
    assert r.extra["nmi"]["unblocks"] == 2
    assert r.extra["nmi"]["steps"] > 200            # the first handler's spin ran stepped


@pytest.mark.parametrize("mode", MODES)
def test_blocking_ends_at_the_iret_so_a_later_nmi_is_taken(mode):
    r = _run(f"""
    mov dword ptr [{ICR_LO:#x}], {SELF_NMI:#x}
    mov dword ptr [{ICR_LO:#x}], {SELF_NMI:#x}
    """, mode)
    assert r.regs["esi"] == 2 and r.counters["interrupts_injected"] == {"0x2": 2}


def test_an_nmi_with_no_handler_run_costs_no_steps():
    r = _run("    nop\n", "emulate")
    assert "nmi" not in r.extra and r.counters["interrupts_injected"] == {}


@pytest.mark.parametrize("body", [ONE_NMI_IF_CLEAR, NESTED])
def test_every_mode_agrees_around_nmis(body):
    rs = {m: _run(body, m) for m in MODES}
    assert len({r.retired for r in rs.values()}) == 1, {m: r.retired for m, r in rs.items()}
    regs = {m: tuple(sorted((k, v) for k, v in r.regs.items() if k != "esp")) for m, r in rs.items()}
    assert len(set(regs.values())) == 1, regs
