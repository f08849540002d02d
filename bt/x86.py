"""Architectural facts of 32-bit x86, defined once.

Page size, EFLAGS/CR0/CR4 bits, page-table entry bits, exception vectors,
descriptor access bits and system-descriptor types, and the 32-bit TSS offsets
the VMM reads.  Everything here is what the Intel SDM (vol. 3) says; nothing
here is a choice of this project.  The scanner, the patcher and the runtime
read these names instead of writing the numbers again.
"""
from __future__ import annotations

# -- paging -----------------------------------------------------------------------
PAGE = 0x1000
PAGE_SHIFT = 12
PAGE_MASK = ~(PAGE - 1) & 0xFFFFFFFF          # a 32-bit address with its page offset cleared
LARGE_PAGE = 0x400000                         # what one page-directory entry maps (4 MiB, no PAE)
# The PC's APIC window (I/O APIC at 0xFEC00000, local APIC at 0xFEE00000), first
# and last byte: guests reach it by address without asking, so the hypervisor
# area is never moved over it (runtime/paging.py `free_base`).
APIC_WINDOW = (0xFEC00000, 0xFEFFFFFF)

PTE_P = 1 << 0                  # present
PTE_W = 1 << 1                  # writable
PTE_U = 1 << 2                  # user
PTE_A = 1 << 5                  # accessed (the CPU's walk sets it)
PTE_D = 1 << 6                  # dirty (a write through the entry; in a table entry or a large page)
PTE_PS = 1 << 7                 # in a PDE: a 4 MiB page
PDE_PS_RESERVED = 1 << 21       # a 4 MiB entry's bit 21 (bits 20:13 are PSE-36 address bits)
PTE_NX = 1 << 63                # PAE entries: no execute (only with EFER.NXE; reserved without)
PAE_ENTRY = 8                   # PAE table entries are 8 bytes
PAE_ADDR_MASK = 0x000000FFFFFFF000  # a PAE entry's address bits (MAXPHYADDR 40 under Unicorn's CPU)
PAE_RSVD = 0x7FFFFF0000000000   # bits 40-62 of a PAE PDE/PTE: reserved (#PF with RSVD)
PAE_LARGE_RSVD = 0x1FE000       # a 2 MiB PAE entry's bits 13-20 (between PAT and the address)
PAE_PDPTE_RSVD = PAE_RSVD | PTE_NX  # a PDPTE has no NX bit: bit 63 is always reserved there
PAE_LARGE_PAGE = 0x200000       # what one PAE page-directory entry maps
EFER = 0xC0000080               # the extended feature enable MSR
MSR_TSC = 0x10
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
EFER_NXE = 1 << 11

# -- EFLAGS -----------------------------------------------------------------------
CF_BIT = 1 << 0
EFLAGS_FIXED_ONE = 1 << 1       # reserved, always reads as 1
PF_BIT = 1 << 2
AF_BIT = 1 << 4
ZF_BIT = 1 << 6
SF_BIT = 1 << 7
TF_BIT = 1 << 8
IF_BIT = 1 << 9
DF_BIT = 1 << 10
OF_BIT = 1 << 11
IOPL_SHIFT = 12
IOPL_MASK = 3 << IOPL_SHIFT
NT_BIT = 1 << 14
RF_BIT = 1 << 16
VM_BIT = 1 << 17
AC_BIT = 1 << 18
VIF_BIT = 1 << 19
VIP_BIT = 1 << 20
ID_BIT = 1 << 21
EFLAGS_NAMES = {CF_BIT: "CF", PF_BIT: "PF", AF_BIT: "AF", ZF_BIT: "ZF", SF_BIT: "SF", TF_BIT: "TF",
                IF_BIT: "IF", DF_BIT: "DF", OF_BIT: "OF", NT_BIT: "NT", RF_BIT: "RF", VM_BIT: "VM",
                AC_BIT: "AC", VIF_BIT: "VIF", VIP_BIT: "VIP", ID_BIT: "ID"}     # one-bit flags, low to high

# -- control registers ------------------------------------------------------------
CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_EM = 1 << 2
CR0_TS = 1 << 3
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR0_MSW_BITS = 0xF              # PE, MP, EM, TS: what lmsw may write (it may set PE, never clear it)

CR4_VME = 1 << 0
CR4_PVI = 1 << 1
CR4_TSD = 1 << 2
CR4_DE = 1 << 3
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_MCE = 1 << 6
CR4_PGE = 1 << 7
CR4_PCE = 1 << 8                # rdpmc allowed at CPL > 0
CR4_LA57 = 1 << 12              # 57-bit linear addresses: reserved in 32-bit mode
CR4_UMIP = 1 << 11              # smsw, sgdt, sidt, sldt, str #GP at CPL > 0 (not in the CPU model)

# Debug registers: bits that read as 1 whatever is written (Unicorn at CPL 0 ORs
# them in on every write, as a CPU does; tests/runtime/test_emulation_causes.py).
DR6_FIXED_ONE = 0xFFFF0FF0
DR7_FIXED_ONE = 0x400

# -- exception vectors -------------------------------------------------------------
DE = 0      # divide error
DB = 1      # debug
NMI = 2
BP = 3      # int3
OF = 4      # into
BR = 5      # bound
UD = 6      # invalid opcode
NM = 7      # device not available
DF = 8      # double fault
TS = 10     # invalid TSS
NP = 11     # segment not present
SS = 12     # stack-segment fault
GP = 13     # general protection
PF = 14     # page fault
MF = 16     # x87 floating-point error
AC = 17     # alignment check

ERROR_CODE_VECTORS = frozenset({DF, TS, NP, SS, GP, PF, AC})
CONTRIBUTORY_VECTORS = frozenset({DE, TS, NP, SS, GP})   # two in a row make a #DF
PF_ERR_WRITE = 1 << 1           # page-fault error code: the access was a write
PF_ERR_RSVD = 1 << 3            # page-fault error code: a reserved bit was set
PF_ERR_USER = 1 << 2            # page-fault error code: the access was made at CPL 3
PF_ERR_FETCH = 1 << 4           # page-fault error code: instruction fetch (only with PAE + EFER.NXE)

# -- segment selectors -------------------------------------------------------------
SEL_RPL_MASK = 3
SEL_TI = 1 << 2                 # the selector names the LDT
SEL_INDEX_MASK = 0xFFF8         # the byte offset of the descriptor in its table
DESC_SIZE = 8

# -- descriptor access byte ---------------------------------------------------------
DESC_PRESENT = 0x80
DESC_DPL_SHIFT = 5
DESC_S = 0x10                   # code or data segment (clear: a system descriptor)
DESC_CODE = 0x08                # with DESC_S: code segment
DESC_CONFORMING = 0x04          # code: conforming; data: expand-down
DESC_RW = 0x02                  # code: readable; data: writable
DESC_ACCESSED = 0x01
DESC_TYPE_MASK = 0x0F
DESC_FLAG_G = 0x8               # in the flags nibble: limit counts 4 KiB units
DESC_FLAG_D = 0x4               # in the flags nibble: code segment of 32-bit code (D/B)

# System descriptor types (DESC_S clear).
SYS_TSS16_AVAILABLE = 0x1
SYS_LDT = 0x2
SYS_TSS16_BUSY = 0x3
SYS_CALL_GATE16 = 0x4
SYS_TASK_GATE = 0x5
SYS_TSS32_AVAILABLE = 0x9
SYS_TSS32_BUSY = 0xB
SYS_CALL_GATE32 = 0xC
SYS_INTERRUPT_GATE32 = 0xE
SYS_TRAP_GATE32 = 0xF
TSS_BUSY_BIT = 0x02             # available -> busy type: what ltr sets in the access byte

# -- the 32-bit TSS -----------------------------------------------------------------
TSS_ESP0 = 4                    # ESPn at TSS_ESP0 + TSS_STACK_STRIDE * n, SSn 4 bytes after
TSS_STACK_STRIDE = 8
TSS_IOMAP_BASE = 102            # u16: offset of the I/O permission bitmap
TSS32_SIZE = 104
