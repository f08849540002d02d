# hotflags: a hot loop of the instructions that trap or leak when deprivileged
# (cli, sti, pushfd, popfd), HF_ITERATIONS times. A benchmark of virtualization
# exits: under trap mode every cli/sti is an exit, under binary translation
# none should be. The checksum adds up the *arithmetic* flags (CF PF AF ZF SF
# OF, mask 0x8d5) each pushfd sees, never IF or IOPL, so the output is the same
# in every mode (what pushfd shows of IF is probe-flags' business) while still
# proving that every pushfd/popfd moved the right flags.
HF_ITERATIONS = 100000
HF_MASK = 0x8d5

main:
    mov ecx, HF_ITERATIONS
    xor esi, esi
    xor ebx, ebx
hf_loop:
    # A: flags of (ecx & 7) - 3, observed after cli
    mov eax, ecx
    and eax, 7
    sub eax, 3
    cli
    pushfd
    pop eax
    and eax, HF_MASK
    add esi, eax
    # B: flags of (ecx & 0xff) + 0x80, observed after sti
    mov eax, ecx
    and eax, 0xff
    add eax, 0x80
    sti
    pushfd
    pop eax
    and eax, HF_MASK
    add esi, eax
    # C: an interrupt-safe section; popfd must restore the flags of the last
    # "add esi, eax" (and IF=1), whatever the section did to them
    pushfd
    cli
    inc ebx
    xor eax, eax
    popfd
    pushfd
    pop eax
    and eax, HF_MASK
    add esi, eax
    dec ecx
    jnz hf_loop
    cli
    mov eax, esi
    mov esi, hf_n_checksum
    call report
    mov eax, ebx
    mov esi, hf_n_sections
    call report
    xor eax, eax
    ret

hf_n_checksum: .asciz "hotflags.flags_sum"
hf_n_sections: .asciz "hotflags.sections"
