# cpuloop: CPU-bound work that never leaves the guest until it is done
# (a benchmark of raw guest speed). CL_ITERATIONS rounds of ALU work and a store
# into a 256-byte ring, then one checksum line.
CL_ITERATIONS = 20000000

main:
    mov ecx, CL_ITERATIONS
    xor eax, eax
    mov ebx, 0x9e3779b9
    xor edx, edx
cl_loop:
    add eax, ebx
    rol eax, 5
    xor eax, ecx
    mov dword ptr [cl_ring + edx], eax
    add edx, 4
    and edx, 0xff
    dec ecx
    jnz cl_loop
    # fold the ring into the checksum so the stores matter
    xor edx, edx
cl_fold:
    xor eax, dword ptr [cl_ring + edx]
    rol eax, 1
    add edx, 4
    cmp edx, 256
    jne cl_fold
    mov esi, cl_n_checksum
    call report
    xor eax, eax
    ret

    # The ring lives on its own page, as data does in a real kernel: bt mode
    # write-monitors pages holding code (docs/patches.md, "mixed pages").
    .align 4096
cl_ring:
    .space 256
cl_n_checksum: .asciz "cpuloop.checksum"
    .align 4096
