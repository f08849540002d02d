"""Port numbers and register bit constants of the pc32 devices.

Kept apart from the device logic so tests, docs and devices name the same bits
(the values are the PC's: Intel 8259A/8254 data sheets, NS16550A, MC146818, i8042).
"""

# --- 8259A PIC pair --------------------------------------------------------
PIC_MASTER_CMD = 0x20
PIC_MASTER_DATA = 0x21
PIC_SLAVE_CMD = 0xA0
PIC_SLAVE_DATA = 0xA1
PIC_CASCADE_LINE = 2          # the slave's INT output drives master IR2

ICW1_IC4 = 0x01               # ICW4 will follow
ICW1_SNGL = 0x02              # single chip (no ICW3)
ICW1_LTIM = 0x08              # level-triggered mode (recorded, requests stay edge-latched)
ICW1_INIT = 0x10              # command port write with this bit = ICW1
ICW4_8086 = 0x01
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

OCW3_SELECT = 0x08            # bit 3 set, bit 4 clear: OCW3 (both clear: OCW2)
OCW3_RIS = 0x01               # read ISR (else IRR) ...
OCW3_RR = 0x02                # ... when this bit is set
OCW3_POLL = 0x04
OCW3_SMM = 0x20               # special mask mode on/off ...
OCW3_ESMM = 0x40              # ... when this bit is set

OCW2_EOI = 0x20
OCW2_SL = 0x40
OCW2_R = 0x80

# --- 8254 PIT --------------------------------------------------------------
PIT_CH0 = 0x40
PIT_CH1 = 0x41
PIT_CH2 = 0x42
PIT_CONTROL = 0x43
PIT_IRQ = 0
PIT_READBACK = 3              # control word channel field 3 = read-back command
PIT_ACCESS_LATCH = 0
PIT_ACCESS_LO = 1
PIT_ACCESS_HI = 2
PIT_ACCESS_LOHI = 3
PIT_STATUS_OUT = 0x80         # read-back status byte: OUT pin
PIT_STATUS_NULL = 0x40        # read-back status byte: null count

# --- Port 0x61 (system control port B) -------------------------------------
PORT_B = 0x61
PORTB_GATE2 = 0x01            # PIT channel 2 gate
PORTB_SPEAKER = 0x02          # speaker data enable
PORTB_WRITABLE = 0x0F         # bits 2-3 (parity/IOCHK enables) are stored too
PORTB_REFRESH = 0x10          # refresh request toggle (every 15.085 us)
PORTB_OUT2 = 0x20             # PIT channel 2 OUT pin
REFRESH_PIT_TICKS = 18        # 15.085 us at 1.193182 MHz

# --- 16550 UART ------------------------------------------------------------
COM1_BASE = 0x3F8
COM1_IRQ = 4
COM2_BASE = 0x2F8
COM2_IRQ = 3

UART_RBR = 0   # read, DLAB=0
UART_THR = 0   # write, DLAB=0
UART_DLL = 0   # DLAB=1
UART_IER = 1   # DLAB=0
UART_DLM = 1   # DLAB=1
UART_IIR = 2   # read
UART_FCR = 2   # write
UART_LCR = 3
UART_MCR = 4
UART_LSR = 5
UART_MSR = 6
UART_SCR = 7

IER_RDI = 0x01    # received data available
IER_THRI = 0x02   # transmitter holding register empty
IER_RLSI = 0x04   # receiver line status
IER_MSI = 0x08    # modem status
IER_MASK = 0x0F   # the 16550 has only these four bits

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08    # on a PC, gates the UART's interrupt onto the ISA IRQ line
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F
MSR_CONNECTED = MSR_CTS | MSR_DSR | MSR_DCD   # a terminal is attached

UART_FIFO_SIZE = 16

# --- Debug exit, POST code port -------------------------------------------
DEBUG_EXIT_PORT = 0xF4

# --- Port 0x92 (system control port A, "fast A20 and reset") -----------------
PORT_A = 0x92
PORTA_RESET = 0x01            # a 0 -> 1 transition resets the machine
PORTA_A20 = 0x02              # A20 gate (read back; the machine keeps A20 enabled)
PORTA_DEFAULT = PORTA_A20     # as after a BIOS: A20 enabled, no reset pending

# --- QEMU's pc-testdev (hw/misc/pc-testdev.c) ------------------------------
TESTDEV_DATA = 0xE0           # 4 ports: a 32-bit register, any width at any offset
TESTDEV_FLUSH = 0xE4          # 4 ports: a dword write names a page to "flush"
TESTDEV_DATA_BYTES = 0xE8     # 4 ports: the same register, accessed a byte at a time
TESTDEV_IRQ = 0x2000          # 24 ports: a byte write sets IRQ line (port - 0x2000) to (value != 0)
TESTDEV_IRQ_LINES = 24
POST_PORT = 0x80

# --- CMOS / RTC (MC146818) -------------------------------------------------
CMOS_INDEX = 0x70
CMOS_DATA = 0x71
CMOS_NMI_DISABLE = 0x80   # bit 7 of the index write: NMI mask (no NMI here: ignored)
CMOS_SIZE = 128

RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
CMOS_BASE_MEM_LO = 0x15     # base memory in KiB
CMOS_BASE_MEM_HI = 0x16
CMOS_EXT_MEM_LO = 0x17      # memory above 1 MiB in KiB (max 65535)
CMOS_EXT_MEM_HI = 0x18
CMOS_EXT_MEM2_LO = 0x30     # same, the POST copy
CMOS_EXT_MEM2_HI = 0x31
CMOS_CENTURY = 0x32

REGA_UIP = 0x80
REGA_DEFAULT = 0x26         # 32.768 kHz time base, 1024 Hz periodic rate
REGB_SET = 0x80
REGB_24H = 0x02
REGB_DM_BINARY = 0x04
REGB_DEFAULT = REGB_24H     # BCD, 24-hour: what a PC BIOS leaves
REGD_VRT = 0x80             # valid RAM and time
HOUR_PM = 0x80              # 12-hour mode: PM flag in the hours register

# --- i8042 keyboard controller ---------------------------------------------
I8042_DATA = 0x60
I8042_STATUS = 0x64         # read: status; write: command
I8042_STR_OBF = 0x01        # output buffer full
I8042_STR_IBF = 0x02        # input buffer full (never: commands complete at once)
I8042_STR_SYSFLAG = 0x04    # POST passed
I8042_STR_CMDDAT = 0x08     # last write was a command
I8042_STR_KEYLOCK = 0x10    # keyboard not inhibited
I8042_STR_AUXDATA = 0x20    # output buffer holds aux (mouse) data
I8042_CTR_DEFAULT = 0x30    # both ports' clocks disabled, interrupts off

I8042_CMD_READ_CTR = 0x20
I8042_CMD_WRITE_CTR = 0x60
I8042_CMD_AUX_DISABLE = 0xA7
I8042_CMD_AUX_ENABLE = 0xA8
I8042_CMD_AUX_TEST = 0xA9
I8042_CMD_SELF_TEST = 0xAA
I8042_CMD_KBD_TEST = 0xAB
I8042_CMD_KBD_DISABLE = 0xAD
I8042_CMD_KBD_ENABLE = 0xAE
I8042_CMD_READ_OUTPORT = 0xD0
I8042_CMD_WRITE_OUTPORT = 0xD1
I8042_CMD_WRITE_KBD_OUTBUF = 0xD2
I8042_CMD_WRITE_AUX_OUTBUF = 0xD3
I8042_CMD_WRITE_AUX = 0xD4
I8042_CMD_PULSE_RESET = 0xFE
I8042_SELF_TEST_OK = 0x55
I8042_OUTPORT_RESET = 0x01  # output port bit 0: 0 resets the CPU
I8042_OUTPORT_DEFAULT = 0x03   # CPU running, A20 enabled

# --- local APIC (xAPIC), memory mapped ----------------------------------------
# Register offsets inside the 4 KiB page (Intel SDM vol. 3, table 11-1).
LAPIC_BASE = 0xFEE00000     # the architectural default (APIC base MSR bits 12-35)
LAPIC_SIZE = 0x1000
MSR_APIC_BASE = 0x1B
APIC_BASE_BSP = 1 << 8      # MSR: this is the bootstrap processor
APIC_BASE_EXTD = 1 << 10    # MSR: x2APIC mode (not modelled: CPUID has no x2APIC bit)
APIC_BASE_EN = 1 << 11      # MSR: the APIC is globally enabled
APIC_ID = 0x20
APIC_VERSION = 0x30
APIC_TPR = 0x80
APIC_APR = 0x90
APIC_PPR = 0xA0
APIC_EOI = 0xB0
APIC_RRD = 0xC0
APIC_LDR = 0xD0
APIC_DFR = 0xE0
APIC_SVR = 0xF0
APIC_ISR = 0x100            # 8 registers of 32 bits, 0x10 apart: ISR, TMR, IRR
APIC_TMR = 0x180
APIC_IRR = 0x200
APIC_ESR = 0x280
APIC_LVT_CMCI = 0x2F0
APIC_ICR_LO = 0x300
APIC_ICR_HI = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_ICR = 0x380      # initial count
APIC_TIMER_CCR = 0x390      # current count (read only)
APIC_TIMER_DCR = 0x3E0      # divide configuration
APIC_VERSION_VALUE = 0x00050014     # version 0x14 (integrated xAPIC), 6 LVT entries (max LVT 5)
APIC_SVR_ENABLE = 1 << 8    # software enable
APIC_LVT_MASKED = 1 << 16
APIC_LVT_DELIVERY = 0x700   # delivery mode bits 8-10
APIC_DM_FIXED = 0x000
APIC_DM_LOWEST = 0x100
APIC_DM_SMI = 0x200
APIC_DM_NMI = 0x400
APIC_DM_INIT = 0x500
APIC_DM_STARTUP = 0x600
APIC_DM_EXTINT = 0x700
APIC_TIMER_PERIODIC = 1 << 17     # LVT timer mode bits 17-18: 00 one-shot, 01 periodic
APIC_TIMER_MODE = 3 << 17
APIC_ICR_BUSY = 1 << 12     # delivery status: never set (delivery is instant)
APIC_ICR_LEVEL = 1 << 14
APIC_ICR_TRIGGER = 1 << 15
APIC_ICR_SHORTHAND = 3 << 18
APIC_SH_NONE, APIC_SH_SELF, APIC_SH_ALL, APIC_SH_OTHERS = 0, 1 << 18, 2 << 18, 3 << 18
APIC_ESR_SEND_ILLEGAL = 1 << 5
APIC_ESR_RECV_ILLEGAL = 1 << 6
APIC_ESR_ILLEGAL_REG = 1 << 7

# --- fw_cfg (QEMU's firmware configuration interface, I/O flavour) ------------
FW_CFG_SELECTOR = 0x510     # 16-bit write: the item; resets the data offset
FW_CFG_DATA = 0x511         # 8-bit reads: the item's next byte
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
