"""A scripted gdb client for in-process tests of bt/gdb/server.py, and the
helpers that find a demo label's address (demos are raw images without symbols)."""
from __future__ import annotations

import socket

from keystone import Ks, KS_ARCH_X86, KS_MODE_32

from bt.demos import LOAD_ADDR, full_source
from bt.gdb.protocol import Decoder, frame


def demo_symbol(name: str, label: str) -> int:
    """The address of `label` in demo `name`: the demo assembled with one more
    `.long label` after it (appending changes nothing before)."""
    enc, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(full_source(name) + f"\n.long {label}\n", LOAD_ADDR)
    return int.from_bytes(bytes(enc[-4:]), "little")


def demo_instruction(name: str, label: str, mnemonic: str) -> int:
    """The address of the first `mnemonic` at or after `label` in demo `name`."""
    import capstone
    from bt.demos import assemble
    start = demo_symbol(name, label)
    code = assemble(name)[start - LOAD_ADDR:]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    for insn in md.disasm(code, start):
        if insn.mnemonic == mnemonic:
            return insn.address
    raise LookupError(f"no {mnemonic} after {label} in demo {name}")


class Client:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.dec = Decoder()
        self.events = []
        self.acks = 0

    def send(self, payload: str) -> None:
        self.sock.sendall(frame(payload))

    def reply(self) -> str:
        while True:
            for i, ev in enumerate(self.events):
                if ev.kind == "ack":
                    self.acks += 1
                if ev.kind == "packet":
                    del self.events[:i + 1]
                    self.sock.sendall(b"+")
                    return ev.data.decode("latin-1")
            self.events.clear()
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the stub closed the connection")
            self.events += self.dec.feed(data)

    def cmd(self, payload: str) -> str:
        self.send(payload)
        return self.reply()

    def close(self) -> None:
        self.sock.close()
