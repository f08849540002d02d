# hotflags: a hot loop of the instructions that trap or leak when deprivileged
# (cli, sti, pushfd, popfd), HF_ITERATIONS times, with a checksum of the IF
# values the guest observes. A benchmark of virtualization exits: under trap
# mode every cli/sti is an exit, under binary translation none should be.
HF_ITERATIONS = 100000

main:
    mov ecx, HF_ITERATIONS
    xor esi, esi
    xor edi, edi
hf_loop:
    cli
    pushfd
    pop eax
    and eax, 0x200
    add esi, eax
    sti
    pushfd
    pop eax
    and eax, 0x200
    add esi, eax
    # interrupt-safe section: save flags (IF=1), cli, work, restore (IF=1)
    pushfd
    cli
    inc edi
    popfd
    pushfd
    pop eax
    and eax, 0x200
    add esi, eax
    dec ecx
    jnz hf_loop
    cli
    mov eax, esi
    mov esi, hf_n_checksum
    call report
    mov eax, edi
    mov esi, hf_n_sections
    call report
    xor eax, eax
    ret

hf_n_checksum: .asciz "hotflags.if_sum"
hf_n_sections: .asciz "hotflags.sections"
