# probe-tables: what the guest sees through sgdt, sidt, sldt, str and smsw after
# loading its own GDT (GDT_ADDR), IDT (IDT_ADDR), LDT (LDT_SEL) and TSS (TSS_SEL)
# and setting CR0.MP. At CPL 0 the answers are the guest's own tables and CR0;
# deprivileged (trap mode) these instructions do not fault and report the VMM's
# real registers instead (Robin & Irvine: SGDT, SIDT, SLDT, SMSW, STR).
main:
    call lib_setup_gdt
    call lib_setup_idt
    mov eax, LDT_SEL
    lldt ax
    mov eax, TSS_SEL
    ltr ax
    mov eax, cr0
    or eax, 2
    mov cr0, eax

    # sgdt [pt_gdtr] / sidt [pt_idtr], emitted as bytes (Keystone adds 0x66)
    .byte 0x0f, 0x01, 0x05
    .long pt_gdtr
    .byte 0x0f, 0x01, 0x0d
    .long pt_idtr

    mov esi, pt_n_gdt_base
    mov eax, dword ptr [pt_gdtr + 2]
    call report
    mov esi, pt_n_gdt_limit
    movzx eax, word ptr [pt_gdtr]
    call report
    mov esi, pt_n_idt_base
    mov eax, dword ptr [pt_idtr + 2]
    call report
    mov esi, pt_n_idt_limit
    movzx eax, word ptr [pt_idtr]
    call report

    mov eax, 0xffffffff
    sldt eax
    and eax, 0xffff
    mov esi, pt_n_sldt
    call report
    mov eax, 0xffffffff
    str eax
    and eax, 0xffff
    mov esi, pt_n_str
    call report

    mov eax, 0xffffffff
    smsw eax
    and eax, 0xffff
    mov esi, pt_n_smsw
    call report
    mov word ptr [pt_msw], 0xffff
    smsw word ptr [pt_msw]
    movzx eax, word ptr [pt_msw]
    mov esi, pt_n_smsw_mem
    call report

    # control: mov from cr0 is privileged, so every mode gets it right
    mov eax, cr0
    mov esi, pt_n_cr0
    call report
    and eax, 0xfffffffd
    mov cr0, eax
    xor eax, eax
    ret

pt_gdtr: .word 0xffff
    .long 0xffffffff
pt_idtr: .word 0xffff
    .long 0xffffffff
pt_msw: .word 0
pt_n_gdt_base: .asciz "sgdt.base"
pt_n_gdt_limit: .asciz "sgdt.limit"
pt_n_idt_base: .asciz "sidt.base"
pt_n_idt_limit: .asciz "sidt.limit"
pt_n_sldt: .asciz "sldt"
pt_n_str: .asciz "str"
pt_n_smsw: .asciz "smsw.reg"
pt_n_smsw_mem: .asciz "smsw.mem"
pt_n_cr0: .asciz "cr0"
