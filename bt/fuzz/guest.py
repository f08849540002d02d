"""The fixed frame around every generated program: prelude, handlers, epilogue.

A generated program is a complete ring-0 guest for a raw image loaded at
`LOAD`.  The prelude builds its own flat GDT (with a TSS, ring-3 segments and
descriptors whose accessed bit is clear), an IDT whose exception vectors record
what happened and resume at the address the current statement left in
`RESUME`, software-interrupt handlers that fold their frame into `INT_SUM`, and
a ring-3 return gate.  The epilogue writes every register, flag word and
selector (as the guest sees them) and the exception/interrupt records to COM1
as hex, then exits through the debug-exit port with the status in `STATUS`.

Handlers address their variables through `ss:` because a statement may leave a
data segment register null or odd when a fault arrives; every statement that
changes ss restores it before the next instruction can fault.
"""
from __future__ import annotations

LOAD = 0x100000          # code (prelude, body, epilogue, out-of-line code)
DATA = 0x180000          # variables and scratch memory, on pages that never hold code
GDT_ADDR = 0x10000
IDT_ADDR = 0x11000
TSS_ADDR = 0x12000
TSS2_ADDR = 0x12100      # the `task` feature's second task
TASK2_STACK_TOP = 0x78000
STACK_TOP = 0x90000
KERNEL_STACK_TOP = 0x88000   # esp0 of the TSS: where the ring-3 return gate lands
USER_STACK_TOP = 0x70000

# Variables in the data page (offsets from DATA).
RESUME = DATA + 0x00      # where an exception handler resumes
STATUS = DATA + 0x04      # exit status the epilogue reports
SAVED_ESP = DATA + 0x08   # kernel esp across a ring-3 round trip
FPTR = DATA + 0x0C        # function pointer for `call [disp32]`
FAR_PTR = DATA + 0x10     # 6-byte far pointer (lss, far calls through memory)
RECORDS = DATA + 0x40     # EXC_COUNT, EXC_SUM, INT_SUM: printed by the epilogue
EXC_COUNT = RECORDS + 0
EXC_SUM = RECORDS + 4
INT_SUM = RECORDS + 8
TICK_COUNT = RECORDS + 12   # timer interrupts taken (the `timer` feature)
TICK_SUM = RECORDS + 16     # their frames (eip, cs, eflags) folded together
DB_COUNT = RECORDS + 20     # #DB exceptions taken (the `breakpoints` feature)
DB_SUM = RECORDS + 24       # their DR6 (B0-B3, BS) and faulting EIP folded together
SAVE = DATA + 0x80        # the epilogue's register dump
SCRATCH = DATA + 0x200    # memory operands of generated statements (ebp points here)
SCRATCH_SIZE = 0x100
TABLE_OUT = DATA + 0x400  # sgdt/sidt stores

# Selectors of the generated GDT.
KCODE, KDATA, UCODE, UDATA, TSS_SEL = 0x08, 0x10, 0x1B, 0x23, 0x28
KDATA_FRESH = 0x38        # ring-0 data, accessed bit clear
KCODE_FRESH = 0x40        # ring-0 code, accessed bit clear
DATA_DPL1 = 0x48          # ring-1 data (a ring-0 load with RPL 1 is legal)
TSS2_SEL = 0x50           # a second TSS (the `task` feature)
TASK_GATE_SEL = 0x58      # a task gate to it
SPARE = 0x30              # unused slot: the gdt_store feature writes descriptors there
GDT_LIMIT = 0x5F

GDT_DWORDS = [
    (0x00000000, 0x00000000),
    (0x0000FFFF, 0x00CF9B00),   # 0x08 ring-0 code
    (0x0000FFFF, 0x00CF9300),   # 0x10 ring-0 data
    (0x0000FFFF, 0x00CFFB00),   # 0x18 ring-3 code
    (0x0000FFFF, 0x00CFF300),   # 0x20 ring-3 data
    (0x20000067, 0x00008901),   # 0x28 TSS at 0x12000
    (0x00000000, 0x00000000),   # 0x30 unused (SPARE)
    (0x0000FFFF, 0x00CF9200),   # 0x38 ring-0 data, not accessed
    (0x0000FFFF, 0x00CF9A00),   # 0x40 ring-0 code, not accessed
    (0x0000FFFF, 0x00CFB300),   # 0x48 ring-1 data
    (0x21000067, 0x00008901),   # 0x50 TSS at 0x12100 (TSS2_ADDR)
    (0x00500000, 0x00008500),   # 0x58 task gate to 0x50
]

ERROR_CODE_VECTORS = (8, 10, 11, 12, 13, 14, 17, 21)
INT_VECTORS = (0x40, 0x41, 0x42, 0x43)   # interrupt gates
TRAP_GATE_VECTOR = 0x44                  # a trap gate (IF stays as it was)
RING3_RETURN_VECTOR = 0x80               # DPL-3 gate ring-3 code uses to come back
TICK_VECTOR = 0x20                       # IRQ 0 once the `timer` feature programs the 8259
VM_FLAG = 1 << 17                        # EFLAGS.VM in an exception frame
MAX_EXCEPTIONS = 64                      # more than this: the program is looping on a fault

# Printed in this order by the epilogue (one hex line each).
DIGEST_FIELDS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eflags",
                 "ds", "es", "fs", "gs", "ss", "cs", "exc_count", "exc_sum", "int_sum",
                 "tick_count", "tick_sum", "db_count", "db_sum")
N_RECORDS = 7                            # exc_count .. db_sum
DR6_SEEN = 0x400F                        # DR6 bits the #DB handler folds: B0-B3 and BS
MAX_DEBUG = 200                          # more #DBs than this: the program loops on a breakpoint


def _gate_setup(vector: int, handler: str, type_byte: int) -> list[str]:
    return [f"mov ecx, {vector}", f"mov eax, {handler}", f"mov edx, {type_byte:#x}",
            "call fz_set_gate"]


def prelude(init_regs: dict[str, int]) -> str:
    gdt = "\n".join(f"    .long {lo:#010x}, {hi:#010x}" for lo, hi in GDT_DWORDS)
    gates = []
    for v in range(32):     # #DB (1) has its own handler (the `breakpoints` feature)
        gates += _gate_setup(v, "fz_db" if v == 1 else f"fz_v{v}", 0x8E)
    for v in INT_VECTORS:
        gates += _gate_setup(v, f"fz_int{v:x}", 0x8E)
    gates += _gate_setup(TRAP_GATE_VECTOR, f"fz_int{TRAP_GATE_VECTOR:x}", 0x8F)
    gates += _gate_setup(RING3_RETURN_VECTOR, "fz_ring3_return", 0xEE)
    gates += _gate_setup(TICK_VECTOR, "fz_tick", 0x8E)
    regs = "\n".join(f"    mov {r}, {v:#x}" for r, v in init_regs.items())
    gate_text = "\n".join("    " + g for g in gates)
    return f"""fz_start:
    mov esp, {STACK_TOP:#x}
    cli
    mov esi, fz_gdt
    mov edi, {GDT_ADDR:#x}
    mov ecx, {len(GDT_DWORDS) * 8}
    .byte 0xf3, 0xa4
    .byte 0x0f, 0x01, 0x15
    .long fz_gdtr
    .byte 0xea
    .long fz_reload
    .word {KCODE:#x}
fz_reload:
    mov eax, {KDATA:#x}
    mov ds, eax
    mov es, eax
    mov fs, eax
    mov gs, eax
    mov ss, eax
    mov dword ptr [{TSS_ADDR + 4:#x}], {KERNEL_STACK_TOP:#x}
    mov dword ptr [{TSS_ADDR + 8:#x}], {KDATA:#x}
    mov word ptr [{TSS_ADDR + 0x66:#x}], 0x68
    mov eax, {TSS_SEL:#x}
    ltr ax
    xor ecx, ecx
fz_idt_fill:
    mov eax, fz_unexpected
    mov edx, 0x8e
    call fz_set_gate
    inc ecx
    cmp ecx, 256
    jne fz_idt_fill
{gate_text}
    .byte 0x0f, 0x01, 0x1d
    .long fz_idtr
    mov dword ptr [{RESUME:#x}], fz_epilogue
    mov dword ptr [{STATUS:#x}], 0
    mov dword ptr [{EXC_COUNT:#x}], 0
    mov dword ptr [{EXC_SUM:#x}], 0
    mov dword ptr [{INT_SUM:#x}], 0
    mov dword ptr [{TICK_COUNT:#x}], 0
    mov dword ptr [{TICK_SUM:#x}], 0
    mov dword ptr [{DB_COUNT:#x}], 0
    mov dword ptr [{DB_SUM:#x}], 0
    mov dword ptr [{FPTR:#x}], fz_epilogue
    mov ebp, {SCRATCH:#x}
{regs}
    jmp fz_body
fz_gdtr:
    .word {GDT_LIMIT:#x}
    .long {GDT_ADDR:#x}
fz_idtr:
    .word 0x7ff
    .long {IDT_ADDR:#x}
fz_gdt:
{gdt}
fz_set_gate:
    push eax
    push ebx
    push edi
    lea edi, [{IDT_ADDR:#x} + ecx*8]
    mov ebx, eax
    and ebx, 0xffff
    or ebx, {KCODE << 16:#x}
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
fz_body:
"""


def _fold(total: int, offsets: tuple[int, ...], rot: int, first: str = "xor") -> str:
    """Fold the stack dwords at `offsets` (from ESP, after the handler's
    `push eax`) into the record at `total`: rotate, then combine."""
    return "".join(f"""
    mov eax, dword ptr [esp+{off}]
    rol dword ptr ss:[{total:#x}], {rot}
    {first if i == 0 else "xor"} dword ptr ss:[{total:#x}], eax""" for i, off in enumerate(offsets))


def handlers() -> str:
    out = []
    for v in range(32):
        push_err = "" if v in ERROR_CODE_VECTORS else "    push 0\n"
        out.append(f"fz_v{v}:\n{push_err}    push {v}\n    jmp fz_exception")
    # Stack at fz_exception after `push eax`: eax, vector, error, eip, cs, eflags.
    # A fault in virtual-8086 code (the `v86` feature) leaves V86 for good:
    # back on the saved kernel stack at RESUME, as the ring-3 return gate does.
    out.append(f"""fz_exception:
    push eax
    inc dword ptr ss:[{EXC_COUNT:#x}]{_fold(EXC_SUM, (4, 8, 12, 16, 20), 5, first="add")}
    cmp dword ptr ss:[{EXC_COUNT:#x}], {MAX_EXCEPTIONS}
    ja fz_too_many
    test dword ptr [esp+20], {VM_FLAG:#x}
    jnz fz_ring3_return
    mov eax, dword ptr ss:[{RESUME:#x}]
    mov dword ptr [esp+12], eax
    pop eax
    add esp, 8
    iretd
fz_too_many:
    mov dword ptr ss:[{STATUS:#x}], 4
    jmp fz_epilogue""")
    # Software interrupts: the frame the CPU pushed (eip, cs, eflags) is what differs
    # between a real ring 0 and a deprivileged one, so it goes into the record.
    for v in INT_VECTORS + (TRAP_GATE_VECTOR,):
        out.append(f"""fz_int{v:x}:
    push eax{_fold(INT_SUM, (12, 8), 7)}
    add dword ptr ss:[{INT_SUM:#x}], {v:#x}
    pop eax
    iretd""")
    # A timer tick (the `timer` feature): where it landed -- the frame's eip,
    # cs and eflags (arithmetic flags included) -- is what an exact VMM must
    # reproduce; EOI, and back.
    out.append(f"""fz_tick:
    push eax
    inc dword ptr ss:[{TICK_COUNT:#x}]{_fold(TICK_SUM, (4, 8, 12), 3)}
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd""")
    # #DB (the `breakpoints` feature's instruction breakpoints, a fault at the
    # instruction): DR6's hit bits and the faulting EIP go into the record;
    # DR6 is cleared, as a kernel's handler does, so a later read shows what
    # set it since; and the handler returns with RF set in the frame so the
    # instruction runs once without hitting the breakpoint again.
    out.append(f"""fz_db:
    push eax
    inc dword ptr ss:[{DB_COUNT:#x}]
    mov eax, dr6
    and eax, {DR6_SEEN:#x}
    rol dword ptr ss:[{DB_SUM:#x}], 5
    xor dword ptr ss:[{DB_SUM:#x}], eax
    xor eax, eax
    mov dr6, eax{_fold(DB_SUM, (4,), 7, first="add")}
    or dword ptr ss:[esp+12], 0x10000
    cmp dword ptr ss:[{DB_COUNT:#x}], {MAX_DEBUG}
    ja fz_db_too_many
    pop eax
    iretd
fz_db_too_many:
    mov dword ptr ss:[{STATUS:#x}], 5
    jmp fz_epilogue""")
    out.append(f"""fz_ring3_return:
    mov esp, dword ptr ss:[{SAVED_ESP:#x}]
    jmp dword ptr ss:[{RESUME:#x}]
fz_unexpected:
    mov dword ptr ss:[{STATUS:#x}], 3
    jmp fz_epilogue""")
    return "\n".join(out) + "\n"


def epilogue() -> str:
    saves = [f"    mov dword ptr ss:[{SAVE + 4 * i:#x}], {r}"
             for i, r in enumerate(("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"))]
    sregs = []
    for i, s in enumerate(("ds", "es", "fs", "gs", "ss", "cs")):
        sregs += ["    xor eax, eax", f"    mov ax, {s}", f"    mov dword ptr ss:[{SAVE + 36 + 4 * i:#x}], eax"]
    n_saved = 15
    return "\n".join([
        "fz_epilogue:", *saves,
        "    pushfd", "    pop eax", f"    mov dword ptr ss:[{SAVE + 32:#x}], eax", *sregs,
        # no tick after the state is saved (a program without `timer` never unmasked it)
        "    mov al, 0xff", "    out 0x21, al",
        f"    mov eax, {KDATA:#x}", "    mov ds, eax", "    mov es, eax", "    mov ss, eax",
        f"    mov esp, {STACK_TOP:#x}", "    cld",
        f"    mov esi, {SAVE:#x}", f"    mov ecx, {n_saved}", "    call fz_dump",
        f"    mov esi, {RECORDS:#x}", f"    mov ecx, {N_RECORDS}", "    call fz_dump",
        f"    mov eax, dword ptr [{STATUS:#x}]", "    out 0xf4, al",
        "fz_halt:", "    hlt", "    jmp fz_halt",
        # fz_dump: ecx dwords at esi, one hex line each on COM1.
        "fz_dump:", "    mov eax, dword ptr [esi]", "    call fz_hex", "    add esi, 4",
        "    dec ecx", "    jnz fz_dump", "    ret",
        "fz_hex:", "    push ecx", "    push edx", "    mov edx, eax", "    mov ecx, 8",
        "fz_hex_digit:", "    rol edx, 4", "    mov eax, edx", "    and eax, 0xf",
        "    add al, 0x30", "    cmp al, 0x3a", "    jb fz_hex_out", "    add al, 0x27",
        "fz_hex_out:", "    push edx", "    mov edx, 0x3f8", "    out dx, al", "    pop edx",
        "    dec ecx", "    jnz fz_hex_digit",
        "    mov al, 0x0a", "    mov edx, 0x3f8", "    out dx, al",
        "    pop edx", "    pop ecx", "    ret",
    ]) + "\n"
