# Shared prelude, placed before every demo by bt.demos.load_demo.
# The image is loaded at LOAD_ADDR (defined by the loader) and entered here.
# Fixed addresses below 1 MiB (pc32 puts its own boot structures at 0x500,
# 0x7000, 0x9000 and 0x20000): demos build their descriptor tables at fixed
# addresses so that the values sgdt/sidt/str/sldt report are readable constants
# in the *.expected files, independent of the code layout.
GDT_ADDR = 0x10000
GDT_LIMIT = 0x37
IDT_ADDR = 0x11000
IDT_LIMIT = 0x7ff
TSS_ADDR = 0x12000
LDT_ADDR = 0x13000
USER_STACK_TOP = 0x70000
KERNEL_STACK_TOP = 0x88000
STACK_TOP = 0x90000
KCODE = 0x08
KDATA = 0x10
UCODE = 0x1b
UDATA = 0x23
TSS_SEL = 0x28
LDT_SEL = 0x30

lib_start:
    mov esp, STACK_TOP
    cld
    call main
    jmp lib_exit
