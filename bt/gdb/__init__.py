"""A GDB remote serial protocol stub for `bt-run --gdb` (docs/debugging.md).

protocol.py frames packets, target.py is the guest as the debugger sees it
(registers, memory, breakpoints) and server.py is the connection and the
command loop the VM calls between slices.
"""
