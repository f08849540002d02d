"""The gdb connection and its command loop, run by the VM between slices.

The VM calls `pause_point()` before every slice (runtime/vm.py `_loop`) and
`slice_limit()` when it sizes one; nothing runs concurrently with the engine.
So every stop gdb sees is at a slice boundary with the VMM's state consistent:
* a breakpoint's code hook ends the slice before its instruction (target.py);
* `stepi` is a slice of one instruction: the instruction clock ends a slice on
  exactly its n-th counted instruction (runtime/clock.py), and in bt a stub's
  instructions count as the one guest instruction they translate, so a step
  through patched code moves from guest instruction to guest instruction;
* Ctrl-C (0x03) is read at the next slice boundary (slices end at the next
  device event, at most 50 M instructions).
Only `continue` with no breakpoint keeps the run's slices as they are without
gdb, so virtual time and every figure are the same.  A stop adds a slice
boundary, where an interrupt the guest enabled without an exit (emulate's
native sti/popf) can be injected sooner than the 2,000-instruction poll would.

Stop replies are `S05` (breakpoint, step, attach) and `S02` (Ctrl-C); the run's
end is `Wnn` with bt-run's exit status, or `Xnn` with the signal that stopped it.
"""
from __future__ import annotations

import select
import socket

from unicorn import UcError

from bt import interrupt
from bt.gdb import protocol
from bt.gdb.protocol import Decoder, le32, parse_le
from bt.gdb.target import REGISTERS, Target, TargetError
from bt.outcome import Outcome

SIGINT, SIGTRAP = 2, 5
POLL = 0.2          # seconds between checks for a host Ctrl-C while blocked on gdb


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); the host defaults to 127.0.0.1."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--gdb {text!r}: PORT must be a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--gdb {text!r}: PORT must be 0..65535")
    return host or "127.0.0.1", number


class GdbServer:
    """`GdbServer(vm, "localhost:1234")` listens at once and sets `vm.debugger`.
    `wait`: stop before the first guest instruction until gdb attaches; else the
    guest runs and stops when gdb connects."""

    def __init__(self, vm, address: str, wait: bool = True, log=None):
        host, port = parse_address(address)
        self.vm = vm
        self.target = Target(vm)
        self.wait = wait
        self.log = log or (lambda msg: None)
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self._decoder = Decoder()
        self._events: list = []
        self._stepping = False
        self._step_from = 0
        self._killed = False
        self._running = False       # gdb waits for a stop reply (after c / s)
        vm.debugger = self

    # -- called by the VM -------------------------------------------------------------
    def pause_point(self) -> None:
        if self.conn is None:
            if not self._attach():
                return
            self._serve(None)       # gdb asks `?` for the stop reason
            return
        t = self.target
        if t.hit is not None:
            signal = SIGTRAP
        elif self._stepping and self.vm.retired != self._step_from:
            signal = SIGTRAP
        elif self._interrupted():
            signal = SIGINT
        else:
            return
        if self.conn is not None:
            self._serve(signal)

    def slice_limit(self) -> int | None:
        return 1 if self._stepping else None

    def finish(self, result) -> None:
        """The run ended: tell gdb (W/X) if it is waiting, then let it hang up."""
        if self.conn is not None:
            if result.reason is Outcome.INTERRUPTED:     # status 128 + signal
                self._send("X%02x" % ((result.exit_status - 128) & 0xFF))
            elif not self._killed:
                self._send("W%02x" % (result.exit_status & 0xFF))
            self._linger()
        self.close()

    def close(self) -> None:
        self._drop()
        try:
            self.listener.close()
        except OSError:
            pass

    # -- connection -----------------------------------------------------------------------
    def _attach(self) -> bool:
        """Accept gdb: blocking the first time when `wait`, else only if it is there."""
        timeout = POLL if self.wait else 0
        while True:
            ready, _, _ = select.select([self.listener], [], [], timeout)
            if ready:
                break
            if not self.wait or interrupt.pending() is not None:
                return False
        self.conn, peer = self.listener.accept()
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder = Decoder()
        self._events = []
        self.log(f"gdb attached from {peer[0]}:{peer[1]}")
        self.wait = False           # after a detach the guest runs until gdb returns
        self._running = False
        return True

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None

    def _detach(self) -> None:
        """gdb left (D, or the connection closed): the guest runs on, free."""
        self.target.clear_breakpoints()
        self._stepping = False
        self._running = False
        self._drop()
        self.log("gdb detached; the run goes on")

    def _read(self, timeout: float | None) -> bool:
        """Read what gdb sent into the event queue; False when it hung up."""
        ready, _, _ = select.select([self.conn], [], [], timeout)
        if not ready:
            return True
        try:
            data = self.conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            return False
        self._events += self._decoder.feed(data)
        return True

    def _interrupted(self) -> bool:
        """Between slices while the guest runs: did gdb send Ctrl-C (or hang up)?"""
        if not self._read(0):
            self._detach()
            return False
        for i, ev in enumerate(self._events):
            if ev.kind == "interrupt":
                del self._events[:i + 1]
                return True
        return False

    def _ack(self, sign: bytes) -> None:
        try:
            self.conn.sendall(sign)
        except OSError:
            self._detach()

    def _send(self, payload: str) -> None:
        try:
            self.conn.sendall(protocol.frame(payload))
        except OSError:
            self._detach()

    def _linger(self) -> None:
        """After W/X gdb acknowledges and closes; wait for that a little while."""
        for _ in range(10):
            if self.conn is None or not self._read(POLL):
                return

    # -- the command loop ------------------------------------------------------------------
    def _serve(self, signal: int | None) -> None:
        """Stopped: report why (when gdb waits for it) and answer packets until gdb
        resumes the guest, detaches or kills it."""
        t = self.target
        if signal is not None and self._running:
            self._send("S%02x" % signal)
        self._running = False
        self._stepping = False
        t.hit = None
        while self.conn is not None:
            if not self._events:
                if interrupt.pending() is not None:
                    return      # a host Ctrl-C/SIGTERM: the VM's loop ends the run
                if not self._read(POLL):
                    self._detach()
                    return
                continue
            ev = self._events.pop(0)
            if ev.kind == "bad":
                self._ack(b"-")
                continue
            if ev.kind != "packet":
                continue
            self._ack(b"+")
            if self.conn is None:
                return
            reply = self.handle(ev.data.decode("latin-1"))
            if reply is _RESUME:
                self._running = True
                t.before_resume()
                return
            if reply is _GONE:
                return
            if reply is not None:
                self._send(reply)

    def handle(self, packet: str):
        """One packet -> its reply text, or `_RESUME` / `_GONE` (no reply now)."""
        t = self.target
        cmd = packet[:1]
        try:
            if packet == "?":
                return "S%02x" % SIGTRAP
            if packet.startswith("qSupported"):
                return "PacketSize=4000;vContSupported+"
            if packet == "qAttached":
                return "1"
            if packet == "qC":
                return "QC1"
            if packet == "qfThreadInfo":
                return "m1"
            if packet == "qsThreadInfo":
                return "l"
            if cmd == "H" or cmd == "T":
                return "OK"
            if packet == "vCont?":
                return "vCont;c;C;s;S"
            if packet.startswith("vCont;"):
                action = packet[6:7]
                return self._resume(step=action in "sS")
            if cmd in "cC":
                return self._resume(step=False)
            if cmd in "sS":
                return self._resume(step=True)
            if cmd == "g":
                return "".join(le32(t.read_register(r)) for r in REGISTERS)
            if cmd == "G":
                data = packet[1:]
                for i, r in enumerate(REGISTERS):
                    chunk = data[8 * i:8 * i + 8]
                    if len(chunk) == 8:
                        t.write_register(r, parse_le(chunk))
                return "OK"
            if cmd == "p":
                n = int(packet[1:], 16)
                return le32(t.read_register(REGISTERS[n])) if n < len(REGISTERS) else "E16"
            if cmd == "P":
                num, _, value = packet[1:].partition("=")
                n = int(num, 16)
                if n >= len(REGISTERS):
                    return "E16"
                t.write_register(REGISTERS[n], parse_le(value))
                return "OK"
            if cmd == "m":
                addr, _, size = packet[1:].partition(",")
                return t.read_memory(int(addr, 16), int(size, 16)).hex()
            if cmd == "M":
                where, _, data = packet[1:].partition(":")
                addr, _, size = where.partition(",")
                raw = bytes.fromhex(data)
                if len(raw) != int(size, 16):
                    return "E16"
                t.write_memory(int(addr, 16), raw)
                return "OK"
            if cmd in "Zz" and packet[1:2] in ("0", "1"):
                _kind, addr, _size = packet[1:].split(",")[:3]
                if cmd == "Z":
                    t.add_breakpoint(int(addr, 16))
                else:
                    t.remove_breakpoint(int(addr, 16))
                return "OK"
            if cmd == "D":
                self._send("OK")
                self._detach()
                return _GONE
            if cmd == "k" or packet.startswith("vKill"):
                self._killed = True     # gdb expects no reply to k
                self.vm.stop = Outcome.QUIT.stop("killed by gdb")
                self._drop()
                return _GONE
        except TargetError as e:
            return "E%02x" % e.errno
        except (ValueError, IndexError, UcError):     # a malformed packet, a refused write
            return "E16"
        return ""           # not supported: the empty reply

    def _resume(self, step: bool):
        self._stepping = step
        self._step_from = self.vm.retired
        return _RESUME


_RESUME = object()
_GONE = object()
