# probe-flags: what the guest sees of EFLAGS.IF and IOPL through pushfd/popfd.
# At CPL 0 every answer is the guest's own truth. Deprivileged at CPL 1 with the
# real IF=1 and IOPL=0 (trap mode), pushfd shows the VMM's flags and popfd
# silently ignores IF and IOPL (Robin & Irvine: PUSHF/POPF).
main:
    # 1. after cli, pushfd shows IF=0 and IOPL=0
    cli
    pushfd
    pop eax
    mov esi, pf_n_cli_if
    call pf_report_if
    mov esi, pf_n_cli_iopl
    call pf_report_iopl

    # 2. popfd with IF set in the popped image: pushfd shows IF=1
    pushfd
    pop eax
    or eax, 0x200
    push eax
    popfd
    pushfd
    pop eax
    mov esi, pf_n_popfd_set_if
    call pf_report_if

    # 3. popfd with IF clear (from IF=1): pushfd shows IF=0
    pushfd
    pop eax
    and eax, 0xfffffdff
    push eax
    popfd
    pushfd
    pop eax
    mov esi, pf_n_popfd_clear_if
    call pf_report_if

    # 4. popfd setting IOPL=3 (allowed at CPL 0 only), then back to 0
    pushfd
    pop eax
    or eax, 0x3000
    push eax
    popfd
    pushfd
    pop eax
    mov esi, pf_n_popfd_iopl
    call pf_report_iopl
    and eax, 0xffffcfff
    push eax
    popfd

    # 5. sti, then pushfd shows IF=1; cli again
    sti
    pushfd
    pop eax
    cli
    mov esi, pf_n_sti_if
    call pf_report_if

    # 6. does popfd really enable interrupts? A fast timer raises IRQ0 while IF=0
    # (it stays pending), then popfd sets IF: on real hardware the pending tick
    # is taken at once.
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 0x20
    mov eax, pf_tick
    mov edx, 0x8e
    call set_gate
    call lib_init_pic
    mov eax, 100
    call lib_init_pit
    # ~100 timer periods at 100 MHz virtual time, all with IF=0
    mov ecx, 300000
pf_pending:
    dec ecx
    jnz pf_pending
    mov esi, pf_n_before
    mov eax, dword ptr [pf_ticks]
    call report
    pushfd
    pop eax
    or eax, 0x200
    push eax
    popfd
    # give the VMM many chances to inject (it injects between slices)
    mov ecx, 2000000
pf_wait:
    cmp dword ptr [pf_ticks], 0
    jne pf_taken
    dec ecx
    jnz pf_wait
pf_taken:
    cli
    call lib_mask_pic
    mov esi, pf_n_after
    xor eax, eax
    cmp dword ptr [pf_ticks], 0
    setne al
    call report
    xor eax, eax
    ret

# eax = EFLAGS image; print its IF bit (0 or 1) under the name in esi.
pf_report_if:
    push eax
    shr eax, 9
    and eax, 1
    call report
    pop eax
    ret

# eax = EFLAGS image; print its IOPL (0..3) under the name in esi.
pf_report_iopl:
    push eax
    shr eax, 12
    and eax, 3
    call report
    pop eax
    ret

pf_tick:
    push eax
    inc dword ptr [pf_ticks]
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd

pf_ticks: .long 0
pf_n_cli_if: .asciz "cli.pushfd.if"
pf_n_cli_iopl: .asciz "cli.pushfd.iopl"
pf_n_popfd_set_if: .asciz "popfd_set_if.pushfd.if"
pf_n_popfd_clear_if: .asciz "popfd_clear_if.pushfd.if"
pf_n_popfd_iopl: .asciz "popfd_iopl3.pushfd.iopl"
pf_n_sti_if: .asciz "sti.pushfd.if"
pf_n_before: .asciz "irq.ticks_while_if_clear"
pf_n_after: .asciz "popfd_set_if.irq_taken"
