# smc: self-modifying code. Each routine is called, rewritten, and called again
# (a call/ret separates the write from the execution, as the architecture asks).
# 1. an immediate operand is rewritten;
# 2. the instruction right after a pushfd (a patch site under binary
#    translation, whose jump would cover these bytes) is rewritten, first its
#    immediate, then the whole instruction;
# 3. a cli is replaced by a nop and later restored;
# 4. the guest reads its own code bytes back: it must see exactly what it wrote.
main:
    call smc_imm
    mov esi, smc_n_imm1
    call report
    mov dword ptr [smc_imm + 1], 0x22222222
    call smc_imm
    mov esi, smc_n_imm2
    call report

    call smc_flags
    mov eax, ecx
    mov esi, smc_n_after_pushfd1
    call report
    mov dword ptr [smc_after_pushfd + 1], 0x44444444
    call smc_flags
    mov eax, ecx
    mov esi, smc_n_after_pushfd2
    call report
    # replace "mov ecx, imm32" (5 bytes) by "xor ecx, ecx ; inc ecx ; nop ; nop"
    mov dword ptr [smc_after_pushfd], 0x9041c931
    mov byte ptr [smc_after_pushfd + 4], 0x90
    call smc_flags
    mov eax, ecx
    mov esi, smc_n_after_pushfd3
    call report

    # the IF seen after "sti ; <cli or nop>": 0 with cli, 1 with nop
    call smc_cli
    mov esi, smc_n_cli1
    call report
    mov byte ptr [smc_cli_site], 0x90
    call smc_cli
    mov esi, smc_n_cli2
    call report
    mov byte ptr [smc_cli_site], 0xfa
    call smc_cli
    mov esi, smc_n_cli3
    call report

    # read back the code bytes (little-endian dwords)
    mov eax, dword ptr [smc_imm]
    mov esi, smc_n_bytes_imm
    call report
    mov eax, dword ptr [smc_flags]
    mov esi, smc_n_bytes_flags0
    call report
    mov eax, dword ptr [smc_flags + 4]
    mov esi, smc_n_bytes_flags4
    call report
    mov eax, dword ptr [smc_cli]
    mov esi, smc_n_bytes_cli
    call report
    xor eax, eax
    ret

smc_imm:
    mov eax, 0x11111111
    ret

# returns ecx = the immediate of the instruction after pushfd
smc_flags:
    pushfd
smc_after_pushfd:
    mov ecx, 0x33333333
    popfd
    ret

# returns eax = IF after "sti ; cli" (or "sti ; nop" once rewritten); leaves IF=0
smc_cli:
    sti
smc_cli_site:
    cli
    pushfd
    pop eax
    cli
    shr eax, 9
    and eax, 1
    ret

smc_n_imm1: .asciz "imm.first"
smc_n_imm2: .asciz "imm.second"
smc_n_after_pushfd1: .asciz "after_pushfd.first"
smc_n_after_pushfd2: .asciz "after_pushfd.second"
smc_n_after_pushfd3: .asciz "after_pushfd.replaced"
smc_n_cli1: .asciz "cli.if"
smc_n_cli2: .asciz "cli_nopped.if"
smc_n_cli3: .asciz "cli_restored.if"
smc_n_bytes_imm: .asciz "bytes.imm"
smc_n_bytes_flags0: .asciz "bytes.flags+0"
smc_n_bytes_flags4: .asciz "bytes.flags+4"
smc_n_bytes_cli: .asciz "bytes.cli"
