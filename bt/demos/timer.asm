# timer: a Linux-like workload. Its own GDT/IDT, the PIC remapped to 0x20/0x28,
# the PIT at ~1 kHz (reload 1193), a tick handler that sends EOI, and a main loop
# that alternates a burst of interrupt-safe critical sections
#     pushfd ; cli ; ...update shared counters... ; popfd
# with `sti ; hlt` idling until the next tick.
# The loop runs exactly TM_ROUNDS rounds of TM_SECTIONS sections each, so every
# printed value is independent of when the ticks land; a burst is longer than a
# tick period, so ticks do arrive while the workload runs (and inside critical
# sections, where they must be held back until popfd).
# Nothing printed depends on what pushfd shows, so the output must be the same
# under emulate, trap and bt (the trap-mode promise: no interrupt while the
# virtual IF is clear).
TM_ROUNDS = 50
TM_SECTIONS = 8000

main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 0x20
    mov eax, tm_tick
    mov edx, 0x8e
    call set_gate
    call lib_init_pic
    mov eax, 1193
    call lib_init_pit
    sti
    xor edi, edi
tm_round:
    mov ecx, TM_SECTIONS
tm_burst:
    pushfd
    cli
    mov dword ptr [tm_in_cs], 1
    mov eax, dword ptr [tm_counter]
    imul eax, eax, 33
    add eax, ecx
    xor eax, 0x5bd1e995
    mov dword ptr [tm_counter], eax
    inc dword ptr [tm_sections]
    mov dword ptr [tm_in_cs], 0
    popfd
    add dword ptr [tm_outside], 3
    dec ecx
    jnz tm_burst
    # wait for the next tick: sample the tick count with interrupts off, then
    # idle with sti;hlt (the sti shadow makes the pair atomic) until it moves.
    cli
    mov ebx, dword ptr [tm_ticks]
tm_wait:
    sti
    hlt
    cli
    cmp dword ptr [tm_ticks], ebx
    je tm_wait
    inc dword ptr [tm_waits]
    sti
    inc edi
    cmp edi, TM_ROUNDS
    jne tm_round

    cli
    call lib_mask_pic
    mov esi, tm_n_waits
    mov eax, dword ptr [tm_waits]
    call report
    mov esi, tm_n_enough
    xor eax, eax
    cmp dword ptr [tm_ticks], TM_ROUNDS
    setae al
    call report
    mov esi, tm_n_sections
    mov eax, dword ptr [tm_sections]
    call report
    mov esi, tm_n_counter
    mov eax, dword ptr [tm_counter]
    call report
    mov esi, tm_n_outside
    mov eax, dword ptr [tm_outside]
    call report
    mov esi, tm_n_violations
    mov eax, dword ptr [tm_violations]
    call report
    xor eax, eax
    ret

# IRQ0: count the tick, and count a violation if it interrupted a critical section.
tm_tick:
    push eax
    cmp dword ptr [tm_in_cs], 0
    je tm_tick_ok
    inc dword ptr [tm_violations]
tm_tick_ok:
    inc dword ptr [tm_ticks]
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd

# Data lives on its own page, as in a real kernel's .data: bt mode
# write-monitors pages holding code, so data sharing a page with code would
# turn every store into an exit (docs/patches.md, 'mixed pages').
.align 4096
tm_ticks: .long 0
tm_waits: .long 0
tm_in_cs: .long 0
tm_counter: .long 0
tm_sections: .long 0
tm_outside: .long 0
tm_violations: .long 0
tm_n_waits: .asciz "timer.ticks_waited"
tm_n_enough: .asciz "timer.ticks_at_least_waited"
tm_n_sections: .asciz "timer.critical_sections"
tm_n_counter: .asciz "timer.counter"
tm_n_outside: .asciz "timer.outside_counter"
tm_n_violations: .asciz "timer.violations"
.align 4096
