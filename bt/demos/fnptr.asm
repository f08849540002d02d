# fnptr: code reached only through computed function pointers. The pointer
# table holds (function - fp_anchor) XOR FP_KEY; the code decodes it at run
# time and adds the anchor's run-time address (found with call/pop), so no
# static scan of the image can resolve the targets. Each target function uses
# sensitive instructions (pushfd, popfd, cli, sti, smsw). Nothing branches to
# them directly, and each is preceded by data bytes, so a linear sweep that
# runs into them is also desynchronised.
FP_KEY = 0x5a5a5a5a

main:
    call fp_anchor
fp_anchor:
    pop ebp
    xor edi, edi
fp_loop:
    mov eax, dword ptr [fp_table + edi*4]
    xor eax, FP_KEY
    add eax, ebp
    mov dword ptr [fp_decoded + edi*4], eax
    inc edi
    cmp edi, 4
    jne fp_loop

    # call them: through a register, and through the decoded table in memory
    mov eax, dword ptr [fp_decoded]
    call eax
    mov esi, fp_n_cli_if
    call report
    mov ecx, 1
    call dword ptr [fp_decoded + ecx*4]
    mov esi, fp_n_sti_if
    call report
    mov ecx, 2
    call dword ptr [fp_decoded + ecx*4]
    mov esi, fp_n_smsw
    call report
    mov ebx, dword ptr [fp_decoded + 12]
    mov edx, fp_returned
    push edx
    jmp ebx
fp_returned:
    mov esi, fp_n_popfd_if
    call report
    mov eax, edi
    mov esi, fp_n_count
    call report
    xor eax, eax
    ret

fp_table:
    .long (fp_f_cli - fp_anchor) ^ FP_KEY
    .long (fp_f_sti - fp_anchor) ^ FP_KEY
    .long (fp_f_smsw - fp_anchor) ^ FP_KEY
    .long (fp_f_popfd - fp_anchor) ^ FP_KEY
fp_decoded:
    .long 0, 0, 0, 0

    .byte 0xe8, 0xff, 0x0f
# eax = IF after cli (0)
fp_f_cli:
    cli
    pushfd
    pop eax
    shr eax, 9
    and eax, 1
    ret

    .byte 0x0f, 0xe9
# eax = IF after sti (1); IF is cleared again before returning
fp_f_sti:
    sti
    pushfd
    cli
    pop eax
    shr eax, 9
    and eax, 1
    ret

    .byte 0xb8, 0x66
# eax = machine status word (CR0 low 16 bits: PE and ET at boot)
fp_f_smsw:
    smsw eax
    and eax, 0xffff
    ret

    .byte 0xc7
# eax = IF after a popfd that sets it (1); IF is cleared again before returning
fp_f_popfd:
    pushfd
    pop eax
    or eax, 0x200
    push eax
    popfd
    pushfd
    pop eax
    cli
    shr eax, 9
    and eax, 1
    ret

fp_n_cli_if: .asciz "fnptr.cli.pushfd.if"
fp_n_sti_if: .asciz "fnptr.sti.pushfd.if"
fp_n_smsw: .asciz "fnptr.smsw"
fp_n_popfd_if: .asciz "fnptr.popfd.pushfd.if"
fp_n_count: .asciz "fnptr.decoded"
