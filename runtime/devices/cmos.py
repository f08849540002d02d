"""CMOS RAM and the MC146818 real-time clock (index 0x70, data 0x71).

The clock shows `epoch + now // cpu_hz` seconds (UTC), so a run that starts
from the same epoch (MachineConfig.rtc_epoch, or `--rtc`) reads the same dates
at the same virtual instants.  Register A's update-in-progress bit always
reads clear (an update takes no virtual time).  Register B starts as a PC BIOS
leaves it, BCD and 24-hour (0x02); the guest may switch to binary (DM bit) or
12-hour mode and the time registers follow.  Writes to the time registers set
the clock (they shift the epoch).  Register D reports valid RAM and time.
Not modelled: alarm, periodic and update-ended interrupts (no IRQ 8 is raised;
register C reads 0).  The bytes PC software reads for memory sizes are filled
in from the RAM size; the rest of the 128 bytes is plain zeroed RAM.
"""
from __future__ import annotations

import calendar
import time

from bt.errors import BadInput

from . import regs
from .base import Device

def _bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


class CMOS(Device):
    name = "cmos"
    ports = (range(regs.CMOS_INDEX, regs.CMOS_DATA + 1),)

    def __init__(self, epoch: int = 1_700_000_000, mem_bytes: int = 0):
        if epoch < 0:
            raise BadInput(f"RTC epoch must not be negative, got {epoch}")
        self.epoch = epoch
        self.index = 0
        self.ram = bytearray(regs.CMOS_SIZE)
        self.ram[regs.RTC_REG_A] = regs.REGA_DEFAULT
        self.ram[regs.RTC_REG_B] = regs.REGB_DEFAULT
        self.ram[regs.RTC_REG_D] = regs.REGD_VRT
        base_kib = 640
        ext_kib = min(max(mem_bytes // 1024 - 1024, 0), 0xFFFF)
        for lo, value in ((regs.CMOS_BASE_MEM_LO, base_kib), (regs.CMOS_EXT_MEM_LO, ext_kib),
                          (regs.CMOS_EXT_MEM2_LO, ext_kib)):
            self.ram[lo] = value & 0xFF
            self.ram[lo + 1] = value >> 8

    # --- the clock ----------------------------------------------------------------
    def seconds(self) -> int:
        return self.epoch + self.link.now() // self.link.cpu_hz

    def _encode(self, n: int) -> int:
        return n if self.ram[regs.RTC_REG_B] & regs.REGB_DM_BINARY else _bcd(n)

    def _decode(self, v: int) -> int:
        return v if self.ram[regs.RTC_REG_B] & regs.REGB_DM_BINARY else _unbcd(v)

    def _fields(self) -> dict[int, int]:
        tm = time.gmtime(self.seconds())
        return {regs.RTC_SECONDS: tm.tm_sec, regs.RTC_MINUTES: tm.tm_min,
                regs.RTC_HOURS: tm.tm_hour, regs.RTC_DAY_OF_WEEK: (tm.tm_wday + 1) % 7 + 1,
                regs.RTC_DAY_OF_MONTH: tm.tm_mday, regs.RTC_MONTH: tm.tm_mon,
                regs.RTC_YEAR: tm.tm_year % 100, regs.CMOS_CENTURY: tm.tm_year // 100}

    def _read_time(self, index: int) -> int:
        value = self._fields()[index]
        if index == regs.RTC_HOURS and not self.ram[regs.RTC_REG_B] & regs.REGB_24H:
            pm = value >= 12
            return self._encode(value % 12 or 12) | (regs.HOUR_PM if pm else 0)
        return self._encode(value)

    def _write_time(self, index: int, raw: int) -> None:
        f = self._fields()
        if index == regs.RTC_DAY_OF_WEEK:
            return                                   # derived from the date
        if index == regs.RTC_HOURS and not self.ram[regs.RTC_REG_B] & regs.REGB_24H:
            hour = self._decode(raw & ~regs.HOUR_PM) % 12
            value = hour + (12 if raw & regs.HOUR_PM else 0)
        else:
            value = self._decode(raw)
        f[index] = value
        try:
            year = f[regs.CMOS_CENTURY] * 100 + f[regs.RTC_YEAR]
            new = calendar.timegm((year, f[regs.RTC_MONTH], f[regs.RTC_DAY_OF_MONTH],
                                   f[regs.RTC_HOURS], f[regs.RTC_MINUTES], f[regs.RTC_SECONDS]))
        except (ValueError, OverflowError):
            return                                   # a nonsense date is not stored
        self.epoch += new - self.seconds()

    # --- ports ----------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if port == regs.CMOS_INDEX:
            return 0xFF                              # the index register is write-only
        i = self.index
        if i in _CLOCK:
            return self._read_time(i)
        if i == regs.RTC_REG_A:
            return self.ram[i] & ~regs.REGA_UIP
        if i == regs.RTC_REG_C:
            return 0                                 # no interrupt flags: none modelled
        return self.ram[i]

    def write(self, port: int, size: int, value: int) -> None:
        if port == regs.CMOS_INDEX:
            self.index = value & ~regs.CMOS_NMI_DISABLE & 0x7F
            return
        i = self.index
        if i in _CLOCK:
            self._write_time(i, value)
        elif i == regs.RTC_REG_A:
            self.ram[i] = value & ~regs.REGA_UIP
        elif i in (regs.RTC_REG_C, regs.RTC_REG_D):
            return                                   # read-only
        else:
            self.ram[i] = value


_CLOCK = frozenset({regs.RTC_SECONDS, regs.RTC_MINUTES, regs.RTC_HOURS, regs.RTC_DAY_OF_WEEK,
                    regs.RTC_DAY_OF_MONTH, regs.RTC_MONTH, regs.RTC_YEAR, regs.CMOS_CENTURY})
