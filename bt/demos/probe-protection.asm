# probe-protection: lar, lsl, verr and verw on the guest's own selectors (after
# lgdt of its GDT and ltr of its TSS). At CPL 0 they report the guest's own
# descriptors: DPL 0 code/data (access 0x9b/0x93), DPL 3 code/data (0xfb/0xf3),
# the busy TSS (0x8b, limit 0x67), and fail (ZF=0) past the GDT limit.
# Deprivileged (trap mode) they run unprivileged against the VMM's shadow GDT,
# where ring compression shows DPL 1 (Robin & Irvine: LAR, LSL, VERR, VERW).
main:
    call lib_setup_gdt
    mov eax, TSS_SEL
    ltr ax
    xor edi, edi
pp_next:
    movzx ebx, byte ptr [pp_selectors + edi]
    call pp_probe
    inc edi
    cmp edi, pp_selectors_end - pp_selectors
    jne pp_next
    xor eax, eax
    ret

# pp_probe: ebx = selector; print lar/lsl values and ZF, verr/verw ZF.
pp_probe:
    xor eax, eax
    lar eax, ebx
    setz cl
    # bits 16-19 of the lar result are architecturally undefined (SDM: mask
    # 00FxFF00H); keep only the defined bits
    and eax, 0x00f0ff00
    mov esi, pp_n_lar
    call pp_line
    movzx eax, cl
    mov esi, pp_n_lar_zf
    call pp_line
    xor eax, eax
    lsl eax, ebx
    setz cl
    mov esi, pp_n_lsl
    call pp_line
    movzx eax, cl
    mov esi, pp_n_lsl_zf
    call pp_line
    verr bx
    setz al
    movzx eax, al
    mov esi, pp_n_verr
    call pp_line
    verw bx
    setz al
    movzx eax, al
    mov esi, pp_n_verw
    call pp_line
    ret

# pp_line: esi = name, ebx = selector (low byte), eax = value ->
# "name[0xSS]: 0xVALUE\n".
pp_line:
    push eax
    call print_str
    mov al, 0x5b
    call putc
    mov al, 0x30
    call putc
    mov al, 0x78
    call putc
    mov eax, ebx
    shr eax, 4
    and eax, 0xf
    mov al, byte ptr [lib_hexdigits + eax]
    call putc
    mov eax, ebx
    and eax, 0xf
    mov al, byte ptr [lib_hexdigits + eax]
    call putc
    mov al, 0x5d
    call putc
    mov al, 0x3a
    call putc
    mov al, 0x20
    call putc
    pop eax
    call print_hex32
    call newline
    ret

pp_selectors:
    .byte KCODE, KDATA, UCODE, UDATA, TSS_SEL, 0x38
pp_selectors_end:
pp_n_lar: .asciz "lar"
pp_n_lar_zf: .asciz "lar.zf"
pp_n_lsl: .asciz "lsl"
pp_n_lsl_zf: .asciz "lsl.zf"
pp_n_verr: .asciz "verr.zf"
pp_n_verw: .asciz "verw.zf"
