# probe-segments: the selectors the guest sees in its segment registers and in
# the frames the CPU pushes for it. At CPL 0 with its own flat GDT the code
# selector is KCODE (0x08, RPL 0) and the stack/data selector KDATA (0x10).
# Deprivileged to CPL 1 (trap mode) mov from cs/ss, push cs/ss and the CS a far
# call pushes carry RPL 1 (Robin & Irvine: MOV/PUSH segment, CALL far).
# The int n frame is built by the VMM when it reflects the interrupt, so it
# should read KCODE in every mode (a control line).
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 0x31
    mov eax, ps_int31
    mov edx, 0x8e
    call set_gate

    mov eax, 0xffffffff
    mov eax, cs
    and eax, 0xffff
    mov esi, ps_n_mov_cs
    call report
    mov eax, 0xffffffff
    mov eax, ss
    and eax, 0xffff
    mov esi, ps_n_mov_ss
    call report
    mov eax, 0xffffffff
    mov eax, ds
    and eax, 0xffff
    mov esi, ps_n_mov_ds
    call report

    # push cs / push ss as single bytes (Keystone would add a 0x66 prefix)
    .byte 0x0e
    pop eax
    and eax, 0xffff
    mov esi, ps_n_push_cs
    call report
    .byte 0x16
    pop eax
    and eax, 0xffff
    mov esi, ps_n_push_ss
    call report

    # call far [ps_farptr] (ff 1d disp32): the callee reads the pushed CS
    .byte 0xff, 0x1d
    .long ps_farptr
    mov esi, ps_n_far_cs
    call report

    int 0x31
    mov esi, ps_n_int_cs
    call report
    xor eax, eax
    ret

# far-called: eax = the CS pushed by the far call
ps_far_target:
    mov eax, dword ptr [esp+4]
    and eax, 0xffff
    retf

# int 0x31: eax = the CS in the interrupt frame
ps_int31:
    mov eax, dword ptr [esp+4]
    and eax, 0xffff
    iretd

ps_farptr:
    .long ps_far_target
    .word KCODE
ps_n_mov_cs: .asciz "mov_cs"
ps_n_mov_ss: .asciz "mov_ss"
ps_n_mov_ds: .asciz "mov_ds"
ps_n_push_cs: .asciz "push_cs"
ps_n_push_ss: .asciz "push_ss"
ps_n_far_cs: .asciz "call_far.pushed_cs"
ps_n_int_cs: .asciz "int31.frame_cs"
