"""The pc32 devices, attached to the machine in one place (`attach_standard_devices`).

The machine that owns the bus must route `MachineLink.raise_irq/lower_irq` to
the returned "pic" device, and inject interrupts with `pic.has_interrupt()` /
`pic.acknowledge()`.  See docs/devices.md.
"""
from __future__ import annotations

from .base import Device, MachineLink
from .bus import IOBus
from .cmos import CMOS
from .debugexit import DebugExit
from .fwcfg import FwCfg
from .i8042 import I8042
from .intc import InterruptRouter
from .lapic import LocalAPIC
from .pctestdev import PCTestDev
from .pic import PICPair
from .pit import PIT
from .port61 import SystemControlB
from .port80 import PostCode
from .port92 import SystemControlA
from .uart import ScriptedInput, UART16550

# Scripted serial input arrives at 1000 bytes per second of virtual time
# (override with MachineConfig.serial_input_interval, in instructions per byte).
SERIAL_INPUT_BYTES_PER_SECOND = 1000

__all__ = ["Device", "MachineLink", "IOBus", "CMOS", "DebugExit", "FwCfg", "I8042", "InterruptRouter",
           "LocalAPIC", "PCTestDev", "PICPair", "PIT",
           "SystemControlA", "SystemControlB", "PostCode", "ScriptedInput", "UART16550",
           "attach_standard_devices", "serial_input_interval"]


def serial_input_interval(config) -> int:
    interval = config.serial_input_interval
    if interval is None:
        interval = max(1, config.cpu_hz // SERIAL_INPUT_BYTES_PER_SECOND)
    return int(interval)


def attach_standard_devices(bus: IOBus, link: MachineLink, config) -> dict[str, Device]:
    """Create the pc32 devices, give them their ports on `bus`, and return them by name:
    pic, pit, port61, port92, uart, cmos, i8042, debug-exit, port80, fw-cfg and
    lapic (memory mapped: `Device.mmio`, mapped by runtime/mmio.py), and
    pc-testdev when `config.pc_testdev` (its RAM: `Device.ram_ranges`).  `config` is a
    bt.machine.MachineConfig (rtc_epoch, mem_bytes, serial_input, serial_input_interval,
    cpu_hz, pc_testdev)."""
    pit = PIT()
    uart = UART16550()
    if config.serial_input is not None:
        uart.set_scripted_input(config.serial_input, serial_input_interval(config))
    devices: list[Device] = [
        PICPair(),
        pit,
        SystemControlB(pit),
        SystemControlA(),
        uart,
        CMOS(epoch=config.rtc_epoch, mem_bytes=config.mem_bytes),
        I8042(),
        DebugExit(),
        PostCode(),
        FwCfg(config.mem_bytes),
        LocalAPIC(),
    ]
    if config.pc_testdev:
        devices.append(PCTestDev())
    for dev in devices:
        bus.attach(dev, link)
    return {dev.name: dev for dev in devices}
