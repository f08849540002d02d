# Shared routines, placed after every demo by bt.demos.load_demo.
# Every routine preserves all registers it does not return a value in, and
# none uses a sensitive instruction (so exit counts stay the demo's own).

# putc: al = byte to send on COM1 (waits for LSR.THRE like a real driver).
putc:
    push edx
    push eax
    mov edx, 0x3fd
lib_putc_wait:
    in al, dx
    test al, 0x20
    jz lib_putc_wait
    pop eax
    mov edx, 0x3f8
    out dx, al
    pop edx
    ret

# print_str: esi = NUL-terminated string.
print_str:
    push eax
    push esi
lib_ps_loop:
    mov al, byte ptr [esi]
    test al, al
    jz lib_ps_done
    call putc
    inc esi
    jmp lib_ps_loop
lib_ps_done:
    pop esi
    pop eax
    ret

# print_hex32: eax = value, printed as 0x followed by 8 lower-case hex digits.
print_hex32:
    push eax
    push ebx
    push ecx
    mov ebx, eax
    mov al, 0x30
    call putc
    mov al, 0x78
    call putc
    mov ecx, 8
lib_ph_loop:
    rol ebx, 4
    mov eax, ebx
    and eax, 0xf
    mov al, byte ptr [lib_hexdigits + eax]
    call putc
    dec ecx
    jnz lib_ph_loop
    pop ecx
    pop ebx
    pop eax
    ret

newline:
    push eax
    mov al, 0x0a
    call putc
    pop eax
    ret

# report: esi = observation name, eax = value -> "name: 0xVALUE\n".
report:
    call print_str
    push esi
    mov esi, lib_colon
    call print_str
    pop esi
    call print_hex32
    call newline
    ret

# lib_exit: al = exit status, written to the pc32 debug-exit port.
lib_exit:
    out 0xf4, al
lib_exit_hang:
    hlt
    jmp lib_exit_hang

# lib_setup_gdt: copy the demo GDT to GDT_ADDR, load it and reload every
# segment register. Flat ring-0 and ring-3 code/data with the accessed bit
# preset (so lar reads the same whether or not a CPU sets it on a segment
# load), a TSS at TSS_ADDR and an LDT at LDT_ADDR.
lib_setup_gdt:
    pushad
    mov esi, lib_gdt_template
    mov edi, GDT_ADDR
    mov ecx, lib_gdt_template_end - lib_gdt_template
    .byte 0xf3, 0xa4
    .byte 0x0f, 0x01, 0x15
    .long lib_gdtr
    .byte 0xea
    .long lib_gdt_reload
    .word KCODE
lib_gdt_reload:
    mov eax, KDATA
    mov ds, eax
    mov es, eax
    mov fs, eax
    mov gs, eax
    mov ss, eax
    popad
    ret

# lib_setup_idt: 256 interrupt gates (DPL 0) to lib_unexpected at IDT_ADDR, then lidt.
lib_setup_idt:
    pushad
    mov eax, lib_unexpected
    mov edx, 0x8e
    xor ecx, ecx
lib_si_loop:
    call set_gate
    inc ecx
    cmp ecx, 256
    jne lib_si_loop
    .byte 0x0f, 0x01, 0x1d
    .long lib_idtr
    popad
    ret

# set_gate: ecx = vector, eax = handler, edx = type byte (0x8e interrupt gate
# DPL 0, 0xee interrupt gate DPL 3, 0x8f trap gate DPL 0); code selector KCODE.
set_gate:
    push eax
    push ebx
    push edi
    lea edi, [IDT_ADDR + ecx*8]
    mov ebx, eax
    and ebx, 0xffff
    or ebx, 0x80000
    mov dword ptr [edi], ebx
    and eax, 0xffff0000
    mov ebx, edx
    shl ebx, 8
    or eax, ebx
    mov dword ptr [edi+4], eax
    pop edi
    pop ebx
    pop eax
    ret

# lib_unexpected: any interrupt or exception a demo did not expect.
lib_unexpected:
    mov esi, lib_unexpected_msg
    call print_str
    mov al, 3
    jmp lib_exit

# lib_init_pic: remap the 8259A pair to vectors 0x20 / 0x28, cascade on IRQ2,
# mask everything except IRQ0.
lib_init_pic:
    push eax
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 0x04
    out 0x21, al
    mov al, 0x02
    out 0xa1, al
    mov al, 0x01
    out 0x21, al
    out 0xa1, al
    mov al, 0xfe
    out 0x21, al
    mov al, 0xff
    out 0xa1, al
    pop eax
    ret

# lib_init_pit: eax = channel 0 reload value, mode 2 (rate generator), lo/hi.
lib_init_pit:
    push eax
    push eax
    mov al, 0x34
    out 0x43, al
    pop eax
    out 0x40, al
    mov al, ah
    out 0x40, al
    pop eax
    ret

# lib_mask_pic: mask every IRQ line (stop the timer reaching the CPU).
lib_mask_pic:
    push eax
    mov al, 0xff
    out 0x21, al
    out 0xa1, al
    pop eax
    ret

lib_gdtr:
    .word GDT_LIMIT
    .long GDT_ADDR
lib_idtr:
    .word IDT_LIMIT
    .long IDT_ADDR
lib_gdt_template:
    .long 0x00000000, 0x00000000
    .long 0x0000ffff, 0x00cf9b00
    .long 0x0000ffff, 0x00cf9300
    .long 0x0000ffff, 0x00cffb00
    .long 0x0000ffff, 0x00cff300
    .long 0x20000067, 0x00008901
    .long 0x3000000f, 0x00008201
lib_gdt_template_end:
lib_hexdigits:
    .ascii "0123456789abcdef"
lib_colon:
    .asciz ": "
lib_unexpected_msg:
    .asciz "unexpected interrupt or exception\n"
