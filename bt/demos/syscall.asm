# syscall: software interrupts and a ring-3 round trip through the TSS.
# The kernel loads its GDT (ring-3 code UCODE=0x1b, data UDATA=0x23), a TSS with
# ss0:esp0 = KDATA:KERNEL_STACK_TOP, an IDT whose gate 0x80 has DPL 3, then
# iretd's into ring-3 code. The user program makes system calls with int 0x80
# (number in eax, argument in ebx, result in eax):
#   1 write(ebx = string)      -> kernel prints it, returns its length
#   2 compute(ebx)             -> returns 3*ebx + 1
#   3 report(ebx)              -> kernel prints "user.value: ebx"
#   0 exit                     -> kernel prints what it saw and ends the run
# The kernel records the CS and SS in each syscall frame and the ring-0 stack
# pointer the CPU switched to (ESP at entry + 5 dwords of frame = esp0).
# Finally the kernel itself does int 0x30 (ring 0 -> ring 0: no stack switch,
# a 3-dword frame).
main:
    call lib_setup_gdt
    call lib_setup_idt
    # TSS: ss0/esp0 for the ring-3 -> ring-0 switch; no I/O bitmap
    mov dword ptr [TSS_ADDR + 4], KERNEL_STACK_TOP
    mov dword ptr [TSS_ADDR + 8], KDATA
    mov word ptr [TSS_ADDR + 102], 104
    mov eax, TSS_SEL
    ltr ax
    mov ecx, 0x80
    mov eax, sc_entry
    mov edx, 0xee
    call set_gate
    mov ecx, 0x30
    mov eax, sc_int30
    mov edx, 0x8e
    call set_gate

    # enter ring 3: iretd with an inter-privilege frame
    # (push of a small named constant assembles as a 16-bit push in Keystone:
    # go through a register)
    mov eax, UDATA
    push eax
    mov eax, USER_STACK_TOP
    push eax
    push 0x2
    mov eax, UCODE
    push eax
    mov eax, sc_user
    push eax
    iretd

# ---- ring 3 ------------------------------------------------------------
sc_user:
    mov eax, UDATA
    mov ds, eax
    mov es, eax
    mov eax, 1
    mov ebx, sc_user_msg
    int 0x80
    mov ebx, eax
    mov eax, 3
    int 0x80
    mov eax, 2
    mov ebx, 0x100
    int 0x80
    mov ebx, eax
    mov eax, 3
    int 0x80
    mov eax, 2
    mov ebx, eax
    int 0x80
    mov ebx, eax
    mov eax, 3
    int 0x80
    # what ring-3 code sees as its own CS: 0x1b
    mov eax, cs
    and eax, 0xffff
    mov ebx, eax
    mov eax, 3
    int 0x80
    xor eax, eax
    int 0x80
sc_user_spin:
    jmp sc_user_spin

# ---- ring 0: the system call entry (interrupt gate, DPL 3) -------------
sc_entry:
    # push ds ; push es as bytes (Keystone adds a 0x66 prefix)
    .byte 0x1e, 0x06
    push edx
    mov edx, KDATA
    mov ds, edx
    mov es, edx
    # frame: [esp+12] eip, [esp+16] cs, [esp+20] eflags, [esp+24] esp, [esp+28] ss
    mov edx, dword ptr [esp+16]
    mov dword ptr [sc_seen_cs], edx
    mov edx, dword ptr [esp+28]
    mov dword ptr [sc_seen_ss], edx
    lea edx, [esp+32]
    mov dword ptr [sc_seen_esp0], edx
    inc dword ptr [sc_count]
    cmp eax, 0
    je sc_exit
    cmp eax, 1
    je sc_write
    cmp eax, 2
    je sc_compute
    cmp eax, 3
    je sc_report
    mov eax, 0xffffffff
    jmp sc_return
sc_write:
    mov esi, ebx
    call print_str
    xor eax, eax
sc_write_len:
    cmp byte ptr [ebx + eax], 0
    je sc_return
    inc eax
    jmp sc_write_len
sc_compute:
    lea eax, [ebx + ebx*2 + 1]
    jmp sc_return
sc_report:
    mov eax, ebx
    mov esi, sc_n_user_value
    call report
    xor eax, eax
sc_return:
    pop edx
    # pop es ; pop ds
    .byte 0x07, 0x1f
    iretd

sc_exit:
    mov esi, sc_n_count
    mov eax, dword ptr [sc_count]
    call report
    mov esi, sc_n_cs
    mov eax, dword ptr [sc_seen_cs]
    and eax, 0xffff
    call report
    mov esi, sc_n_ss
    mov eax, dword ptr [sc_seen_ss]
    and eax, 0xffff
    call report
    mov esi, sc_n_esp0
    mov eax, dword ptr [sc_seen_esp0]
    call report
    # int 0x30 from ring 0: same stack, frame of eip, cs, eflags
    mov dword ptr [sc_esp_before], esp
    int 0x30
    mov esi, sc_n_int30_cs
    mov eax, dword ptr [sc_int30_cs]
    and eax, 0xffff
    call report
    mov esi, sc_n_int30_frame
    mov eax, dword ptr [sc_esp_before]
    sub eax, dword ptr [sc_int30_esp]
    call report
    mov esi, sc_n_int30_ret
    mov eax, dword ptr [sc_int30_ret]
    call report
    xor eax, eax
    jmp lib_exit

sc_int30:
    mov dword ptr [sc_int30_esp], esp
    mov eax, dword ptr [esp+4]
    mov dword ptr [sc_int30_cs], eax
    mov dword ptr [sc_int30_ret], 0x30
    iretd

sc_count: .long 0
sc_seen_cs: .long 0
sc_seen_ss: .long 0
sc_seen_esp0: .long 0
sc_esp_before: .long 0
sc_int30_esp: .long 0
sc_int30_cs: .long 0
sc_int30_ret: .long 0
sc_user_msg: .asciz "user: hello from ring 3\n"
sc_n_user_value: .asciz "user.value"
sc_n_count: .asciz "kernel.syscalls"
sc_n_cs: .asciz "kernel.frame_cs"
sc_n_ss: .asciz "kernel.frame_ss"
sc_n_esp0: .asciz "kernel.esp0"
sc_n_int30_cs: .asciz "int30.frame_cs"
sc_n_int30_frame: .asciz "int30.frame_bytes"
sc_n_int30_ret: .asciz "int30.handled"
