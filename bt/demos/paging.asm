# paging: the guest turns on two-level paging and looks at what it sees.
# Two address spaces (directories PG_PD_A and PG_PD_B) share an identity map of
# the first 4 MiB and a high-half alias of it at 0xC0000000, and differ in
# linear 0x400000-0x7FFFFF.  The demo prints:
#   1. its code through the high alias: a routine called at 0xC0000000 + its
#      address returns the EIP it ran at, and a word read through the alias
#   2. a page fault it handles: a read of unmapped 0x800000 (CR2, error code 0)
#      and a write there (error code 2), and a read of unmapped 0xFE800010
#      (where trap and bt keep their hypervisor area: the guest must not see it)
#   3. CR0.WP: a kernel write to a read-only page succeeds with WP clear and
#      faults with WP set (error code 3)
#   4. a CR3 switch: the same linear address 0x400000 runs different code
#   5. INVLPG after a PTE change: the new frame is seen
#   6. sensitive instructions in code reached through the high alias: pushfd
#      after cli and after sti (IF masked), where trap shows the real IF (1)
#   7. user mode under paging: ring-3 code (iretd through the TSS) makes a
#      system call (int 0x80: frame CS, the ring-0 stack the CPU switched to)
#      writes unmapped 0xFE800020 (#PF, error code 6: user, write) and reads a
#      supervisor-only page (#PF, error code 5: user, present)
#   8. paging off again: CR0 read back, and the identity-mapped code goes on
PG_PD_A = 0x30000
PG_PD_B = 0x31000
PG_PT_LOW = 0x32000          # identity 0-4 MiB; also the high alias's table
PG_PT_X_A = 0x34000          # linear 0x400000-0x7FFFFF in space A
PG_PT_X_B = 0x35000          # the same in space B
PG_CODE_A = 0x38000          # the page at linear 0x400000 in space A
PG_CODE_B = 0x39000          # ... in space B
PG_RO = 0x3A000              # linear 0x401000: read-only (both spaces)
PG_OLD = 0x3B000             # linear 0x402000 before the PTE change
PG_NEW = 0x3C000             # ... after it
PG_SUPER = 0x3D000           # supervisor-only (its PTE at PG_PT_LOW + 0xf4; all other low pages are user)
PG_HIGH = 0xC0000000
PG_X = 0x400000
PG_HOLE = 0x800000           # PD entry 2: not present

main:
    call lib_setup_gdt
    call lib_setup_idt
    mov ecx, 14
    mov eax, pg_on_pf
    mov edx, 0x8e
    call set_gate
    call pg_build
    mov eax, PG_PD_A
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    jmp pg_paged
pg_paged:
    mov eax, cr0
    and eax, 0x80010001
    mov esi, pg_n_cr0
    call report

    # 1. the high alias
    mov eax, pg_where + PG_HIGH
    call eax
    sub eax, pg_where_ret
    mov esi, pg_n_alias_eip
    call report
    mov ebx, pg_marker + PG_HIGH
    mov eax, dword ptr [ebx]
    mov esi, pg_n_alias_word
    call report

    # 2. page faults it handles
    mov dword ptr [pg_resume], pg_after_read
    mov eax, dword ptr [PG_HOLE + 0x123]
pg_after_read:
    call pg_print_fault
    mov dword ptr [pg_resume], pg_after_write
    mov dword ptr [PG_HOLE + 0x456], eax
pg_after_write:
    call pg_print_fault
    mov dword ptr [pg_resume], pg_after_top
    mov eax, dword ptr [0xfe800010]
pg_after_top:
    call pg_print_fault

    # 3. CR0.WP on a read-only page
    mov dword ptr [pg_fault_cr2], 0
    mov dword ptr [pg_fault_err], 0xffffffff
    mov dword ptr [PG_X + 0x1000], 0x1234
    mov eax, dword ptr [PG_RO]
    mov esi, pg_n_wp0
    call report
    mov eax, cr0
    or eax, 0x10000
    mov cr0, eax
    mov dword ptr [pg_resume], pg_after_wp
    mov dword ptr [PG_X + 0x1000], 0x5678
pg_after_wp:
    call pg_print_fault
    mov eax, dword ptr [PG_RO]
    mov esi, pg_n_wp1
    call report
    mov eax, cr0
    and eax, 0xfffeffff
    mov cr0, eax

    # 4. a CR3 switch: different code at the same linear address
    mov eax, PG_X
    call eax
    mov esi, pg_n_space_a
    call report
    mov eax, PG_PD_B
    mov cr3, eax
    mov eax, PG_X
    call eax
    mov esi, pg_n_space_b
    call report
    mov eax, cr3
    mov esi, pg_n_cr3
    call report
    mov eax, PG_PD_A
    mov cr3, eax

    # 5. INVLPG after a PTE change
    mov eax, dword ptr [PG_X + 0x2000]
    mov esi, pg_n_before
    call report
    mov dword ptr [PG_PT_X_A + 8], PG_NEW | 3
    invlpg [PG_X + 0x2000]
    mov eax, dword ptr [PG_X + 0x2000]
    mov esi, pg_n_after
    call report

    # 6. sensitive instructions through the high alias
    mov eax, pg_flags + PG_HIGH
    call eax
    push ebx
    mov esi, pg_n_cli
    call report
    pop eax
    mov esi, pg_n_sti
    call report

    # 7. user mode under paging
    mov dword ptr [TSS_ADDR + 4], KERNEL_STACK_TOP
    mov dword ptr [TSS_ADDR + 8], KDATA
    mov word ptr [TSS_ADDR + 102], 104
    mov eax, TSS_SEL
    ltr ax
    mov ecx, 0x80
    mov eax, pg_syscall
    mov edx, 0xee
    call set_gate
    mov dword ptr [pg_saved_esp], esp
    mov eax, UDATA
    push eax
    mov eax, USER_STACK_TOP
    push eax
    push 0x2
    mov eax, UCODE
    push eax
    mov eax, pg_user
    push eax
    iretd
pg_user_done:
    mov eax, KDATA
    mov ds, eax
    mov es, eax
    mov eax, dword ptr [pg_sys_cs]
    mov esi, pg_n_sys_cs
    call report
    mov eax, dword ptr [pg_sys_esp0]
    mov esi, pg_n_sys_esp0
    call report
    mov eax, dword ptr [pg_sys_ret]
    mov esi, pg_n_sys_ret
    call report
    mov eax, dword ptr [pg_user_top_cr2]
    mov esi, pg_n_cr2
    call report
    mov eax, dword ptr [pg_user_top_err]
    mov esi, pg_n_err
    call report
    call pg_print_fault

    # 8. paging off
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    mov eax, cr0
    and eax, 0x80010001
    mov esi, pg_n_off
    call report
    xor eax, eax
    ret

# ---- ring 3 ----
pg_user:
    mov eax, UDATA
    mov ds, eax
    mov es, eax
    mov eax, 1
    int 0x80
    mov dword ptr [pg_sys_ret], eax
    mov dword ptr [pg_resume], pg_user_after_top
    mov dword ptr [0xfe800020], eax
pg_user_after_top:
    mov eax, dword ptr [pg_fault_cr2]
    mov dword ptr [pg_user_top_cr2], eax
    mov eax, dword ptr [pg_fault_err]
    mov dword ptr [pg_user_top_err], eax
    mov dword ptr [pg_resume], pg_user_after_pf
    mov eax, dword ptr [PG_SUPER]
pg_user_after_pf:
    xor eax, eax
    int 0x80
pg_user_spin:
    jmp pg_user_spin

# ---- ring 0: int 0x80 (eax 1: answer 0x55; eax 0: back to the kernel) ----
pg_syscall:
    mov edx, dword ptr [esp + 4]
    mov dword ptr [pg_sys_cs], edx
    lea edx, [esp + 20]
    mov dword ptr [pg_sys_esp0], edx
    test eax, eax
    jz pg_sys_leave
    mov eax, 0x55
    iretd
pg_sys_leave:
    mov esp, dword ptr [pg_saved_esp]
    jmp pg_user_done

# pg_where: eax = the address this routine returns to inside itself (its EIP).
pg_where:
    call pg_where_ret
pg_where_ret:
    pop eax
    ret

# pg_flags: IF after cli (eax) and after sti (ebx), as pushfd shows them.
pg_flags:
    cli
    pushfd
    pop eax
    and eax, 0x200
    sti
    pushfd
    pop ebx
    and ebx, 0x200
    ret

# pg_print_fault: the last page fault's CR2 and error code.
pg_print_fault:
    mov eax, dword ptr [pg_fault_cr2]
    mov esi, pg_n_cr2
    call report
    mov eax, dword ptr [pg_fault_err]
    mov esi, pg_n_err
    call report
    ret

# #PF: record CR2 and the error code, resume at pg_resume.
pg_on_pf:
    push eax
    mov eax, cr2
    mov dword ptr [pg_fault_cr2], eax
    mov eax, dword ptr [esp + 4]
    mov dword ptr [pg_fault_err], eax
    mov eax, dword ptr [pg_resume]
    mov dword ptr [esp + 8], eax
    pop eax
    add esp, 4
    iretd

# pg_build: the tables.  Every entry P|W (3) except the read-only page (P, 1).
pg_build:
    pushad
    mov edi, PG_PD_A
    xor eax, eax
    mov ecx, 0x1800
    .byte 0xf3, 0xab
    mov edi, PG_PT_LOW
    mov eax, 7
    mov ecx, 1024
pg_fill:
    mov dword ptr [edi], eax
    add eax, 0x1000
    add edi, 4
    dec ecx
    jnz pg_fill
    mov dword ptr [PG_PT_LOW + 0xf4], PG_SUPER | 3
    mov dword ptr [PG_PD_A], PG_PT_LOW | 7
    mov dword ptr [PG_PD_A + 4], PG_PT_X_A | 3
    mov dword ptr [PG_PD_A + 0xc00], PG_PT_LOW | 3
    mov dword ptr [PG_PD_B], PG_PT_LOW | 7
    mov dword ptr [PG_PD_B + 4], PG_PT_X_B | 3
    mov dword ptr [PG_PD_B + 0xc00], PG_PT_LOW | 3
    mov dword ptr [PG_PT_X_A], PG_CODE_A | 3
    mov dword ptr [PG_PT_X_A + 4], PG_RO | 1
    mov dword ptr [PG_PT_X_A + 8], PG_OLD | 3
    mov dword ptr [PG_PT_X_B], PG_CODE_B | 3
    mov dword ptr [PG_PT_X_B + 4], PG_RO | 1
    # code A: mov eax, 0xaaaa ; ret   code B: mov eax, 0xbbbb ; ret
    mov dword ptr [PG_CODE_A], 0x00aaaab8
    mov byte ptr [PG_CODE_A + 4], 0
    mov byte ptr [PG_CODE_A + 5], 0xc3
    mov dword ptr [PG_CODE_B], 0x00bbbbb8
    mov byte ptr [PG_CODE_B + 4], 0
    mov byte ptr [PG_CODE_B + 5], 0xc3
    mov dword ptr [PG_RO], 0
    mov dword ptr [PG_OLD], 0x1111
    mov dword ptr [PG_NEW], 0x2222
    popad
    ret

pg_resume: .long 0
pg_saved_esp: .long 0
pg_sys_cs: .long 0
pg_sys_esp0: .long 0
pg_sys_ret: .long 0
pg_user_top_cr2: .long 0
pg_user_top_err: .long 0
pg_fault_cr2: .long 0
pg_fault_err: .long 0
pg_marker: .long 0x600dc0de
pg_n_cr0: .asciz "cr0.pg.wp.pe"
pg_n_alias_eip: .asciz "alias.eip_minus_low"
pg_n_alias_word: .asciz "alias.word"
pg_n_cr2: .asciz "pf.cr2"
pg_n_err: .asciz "pf.error"
pg_n_wp0: .asciz "wp0.write"
pg_n_wp1: .asciz "wp1.after"
pg_n_space_a: .asciz "cr3.a.code"
pg_n_space_b: .asciz "cr3.b.code"
pg_n_cr3: .asciz "cr3"
pg_n_before: .asciz "invlpg.before"
pg_n_after: .asciz "invlpg.after"
pg_n_cli: .asciz "alias.cli.if"
pg_n_sti: .asciz "alias.sti.if"
pg_n_off: .asciz "cr0.off"
pg_n_sys_cs: .asciz "user.syscall.cs"
pg_n_sys_esp0: .asciz "user.syscall.esp0"
pg_n_sys_ret: .asciz "user.syscall.ret"
