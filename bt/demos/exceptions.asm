# exceptions: the guest's own IDT handles its own faults. Every handler logs
# (vector, error code, EIP in the frame, CS in the frame) and resumes at the
# address in ex_resume, and moves ex_resume_then into ex_resume (so a second
# fault resumes elsewhere; ex_lost catches a fault nobody expected). Cases:
#   1. #DE: div by zero             (fault: frame EIP = the div)
#   2. #UD: ud2                      (fault: frame EIP = the ud2)
#   3. #BP: int3                     (trap: frame EIP = after the 1-byte int3)
#   4. #GP: mov fs with a selector past the GDT limit (error code = selector)
#   5. #DE and then, at the very next instruction, #GP (two faults in a row)
#   6. int 0x31, whose handler itself divides by zero (a fault inside a
#      handler, which on real hardware is an ordinary fault, not a #DF)
#   7. 1000 consecutive #GPs (the exception-in-flight state must not build up)
# Each EIP is printed relative to the faulting instruction's own label.
EX_SELECTOR = 0x1000

main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 0
    mov eax, ex_de
    mov edx, 0x8e
    call set_gate
    mov ecx, 3
    mov eax, ex_bp
    call set_gate
    mov ecx, 6
    mov eax, ex_ud
    call set_gate
    mov ecx, 13
    mov eax, ex_gp
    call set_gate
    mov ecx, 0x31
    mov eax, ex_int31
    call set_gate

    # 1. #DE
    mov dword ptr [ex_resume], ex_after_de
    mov dword ptr [ex_resume_then], ex_lost
    mov eax, 1
    xor edx, edx
    xor ecx, ecx
ex_site_de:
    div ecx
ex_after_de:
    mov esi, ex_n_de
    mov ebx, ex_site_de
    call ex_print_last

    # 2. #UD
    mov dword ptr [ex_resume], ex_after_ud
    mov dword ptr [ex_resume_then], ex_lost
ex_site_ud:
    ud2
ex_after_ud:
    mov esi, ex_n_ud
    mov ebx, ex_site_ud
    call ex_print_last

    # 3. #BP
    mov dword ptr [ex_resume], ex_after_bp
    mov dword ptr [ex_resume_then], ex_lost
ex_site_bp:
    int3
ex_after_bp:
    mov esi, ex_n_bp
    mov ebx, ex_site_bp
    call ex_print_last

    # 4. #GP from a selector past the GDT limit
    mov dword ptr [ex_resume], ex_after_gp
    mov dword ptr [ex_resume_then], ex_lost
    mov eax, EX_SELECTOR
ex_site_gp:
    mov fs, eax
ex_after_gp:
    mov esi, ex_n_gp
    mov ebx, ex_site_gp
    call ex_print_last

    # 5. #DE, resumed straight into a #GP
    mov dword ptr [ex_resume], ex_site_gp2
    mov dword ptr [ex_resume_then], ex_after_gp2
    mov eax, 1
    xor edx, edx
    xor ecx, ecx
ex_site_de2:
    div ecx
ex_site_gp2:
    mov fs, word ptr [ex_bad_selector]
ex_after_gp2:
    mov esi, ex_n_pair_de
    mov ebx, ex_site_de2
    mov edi, 2
    call ex_print_entry
    mov esi, ex_n_pair_gp
    mov ebx, ex_site_gp2
    mov edi, 1
    call ex_print_entry

    # 6. a fault inside a handler
    mov dword ptr [ex_resume], ex_lost
    mov dword ptr [ex_resume_then], ex_lost
ex_site_int31:
    int 0x31
ex_after_int31:
    mov esi, ex_n_int31
    mov ebx, ex_site_int31
    mov edi, 2
    call ex_print_entry
    mov esi, ex_n_nested_de
    mov ebx, ex_int31_site
    mov edi, 1
    call ex_print_entry

    # 7. a burst of #GPs
    mov ecx, 1000
ex_burst:
    mov dword ptr [ex_resume], ex_burst_next
    mov dword ptr [ex_resume_then], ex_lost
    mov eax, EX_SELECTOR
    mov fs, eax
ex_burst_next:
    dec ecx
    jnz ex_burst

    mov esi, ex_n_total
    mov eax, dword ptr [ex_count]
    call report
    # after all that, the segment registers are intact
    mov eax, fs
    and eax, 0xffff
    mov esi, ex_n_fs
    call report
    xor eax, eax
    ret

# ex_print_last: the most recent log entry (edi = 1 entry back).
ex_print_last:
    mov edi, 1
# ex_print_entry: esi = case name, ebx = site address, edi = how many entries
# back in the log (1 = last). Prints name.vector/.error/.eip/.cs.
ex_print_entry:
    push eax
    push edx
    mov edx, dword ptr [ex_count]
    sub edx, edi
    and edx, 15
    shl edx, 4
    mov eax, dword ptr [ex_log + edx]
    push esi
    call print_str
    mov esi, ex_n_vector
    call report
    pop esi
    mov eax, dword ptr [ex_log + edx + 4]
    push esi
    call print_str
    mov esi, ex_n_error
    call report
    pop esi
    mov eax, dword ptr [ex_log + edx + 8]
    sub eax, ebx
    push esi
    call print_str
    mov esi, ex_n_eip
    call report
    pop esi
    mov eax, dword ptr [ex_log + edx + 12]
    and eax, 0xffff
    push esi
    call print_str
    mov esi, ex_n_cs
    call report
    pop esi
    pop edx
    pop eax
    ret

# entry stubs: make every frame look alike (error code, then vector on top)
ex_de:
    push 0
    push 0
    jmp ex_common
ex_bp:
    push 0
    push 3
    jmp ex_common
ex_ud:
    push 0
    push 6
    jmp ex_common
ex_gp:
    push 13
    jmp ex_common
ex_common:
    # [esp] vector, [esp+4] error, [esp+8] eip, [esp+12] cs, [esp+16] eflags
    push eax
    push edx
    mov edx, dword ptr [ex_count]
    and edx, 15
    shl edx, 4
    mov eax, dword ptr [esp+8]
    mov dword ptr [ex_log + edx], eax
    mov eax, dword ptr [esp+12]
    mov dword ptr [ex_log + edx + 4], eax
    mov eax, dword ptr [esp+16]
    mov dword ptr [ex_log + edx + 8], eax
    mov eax, dword ptr [esp+20]
    mov dword ptr [ex_log + edx + 12], eax
    inc dword ptr [ex_count]
    mov eax, dword ptr [ex_resume]
    mov dword ptr [esp+16], eax
    mov eax, dword ptr [ex_resume_then]
    mov dword ptr [ex_resume], eax
    pop edx
    pop eax
    add esp, 8
    iretd

# int 0x31: logs itself, then takes a #DE of its own and resumes after it
ex_int31:
    push eax
    push ecx
    push edx
    mov edx, dword ptr [ex_count]
    and edx, 15
    shl edx, 4
    mov dword ptr [ex_log + edx], 0x31
    mov dword ptr [ex_log + edx + 4], 0
    mov eax, dword ptr [esp+12]
    mov dword ptr [ex_log + edx + 8], eax
    mov eax, dword ptr [esp+16]
    mov dword ptr [ex_log + edx + 12], eax
    inc dword ptr [ex_count]
    mov dword ptr [ex_resume], ex_int31_after
    mov dword ptr [ex_resume_then], ex_lost
    mov eax, 1
    xor edx, edx
    xor ecx, ecx
ex_int31_site:
    div ecx
ex_int31_after:
    pop edx
    pop ecx
    pop eax
    iretd

# a fault with no resume address armed: report it and stop with status 4
ex_lost:
    mov esi, ex_n_lost
    call print_str
    mov al, 4
    jmp lib_exit

# Data lives on its own page, as in a real kernel's .data: bt mode
# write-monitors pages holding code, so data sharing a page with code would
# turn every store into an exit (docs/patches.md, 'mixed pages').
.align 4096
ex_resume: .long 0
ex_resume_then: .long 0
ex_count: .long 0
ex_bad_selector: .word 0x2000
    .align 16
ex_log:
    .space 256
ex_n_de: .asciz "de"
ex_n_ud: .asciz "ud"
ex_n_bp: .asciz "bp"
ex_n_gp: .asciz "gp"
ex_n_pair_de: .asciz "pair.de"
ex_n_pair_gp: .asciz "pair.gp"
ex_n_int31: .asciz "int31"
ex_n_nested_de: .asciz "int31.nested_de"
ex_n_vector: .asciz ".vector"
ex_n_error: .asciz ".error"
ex_n_eip: .asciz ".eip"
ex_n_cs: .asciz ".cs"
ex_n_total: .asciz "exceptions.total"
ex_n_fs: .asciz "fs"
ex_n_lost: .asciz "fault with no resume address\n"
.align 4096
