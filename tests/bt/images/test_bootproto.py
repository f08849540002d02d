"""The boot-protocol loader (bt/images/bootproto.py) with an image the suite assembles.

A minimal bzImage: one setup sector with a protocol-2.15 header, then
protected-mode code that does what Linux's decompressor does in small: it
prints over COM1, copies itself (code and payload) higher and jumps into the
copy (a self-relocation: code written, then run), unpacks its payload --
stored, or compressed with a small LZ77 the test implements on both sides --
to PAYLOAD, and jumps there with ESI still pointing at boot_params.  The
payload prints the command line it finds through boot_params and ends the run
through the debug-exit port.  Every mode must run it, with emulate's output and
instruction count.
"""
from __future__ import annotations

import struct

import pytest
from keystone import Ks, KS_ARCH_X86, KS_MODE_32

from bt.errors import BadInput
from bt.images import load_image
from bt.machine import BOOT_PARAMS_ADDR, MachineConfig
from runtime.vm import VM

PAYLOAD = 0x400000
RELOC = 0x800000
INIT_SIZE = 0x800000
CMDLINE = "console=ttyS0 hello"

_PRINT = """
print:                      # esi -> NUL-terminated string; clobbers eax, edx
    mov dx, 0x3fd
wait_{n}:
    in al, dx
    test al, 0x20
    jz wait_{n}
    lodsb
    test al, al
    jz done_{n}
    mov dx, 0x3f8
    out dx, al
    jmp print
done_{n}:
    ret
"""

# The payload, assembled for PAYLOAD.  (Keystone mis-assembles differences of
# labels such as `msg - here`, so the code uses absolute label addresses.)
PAYLOAD_SRC = """
    mov ebx, esi                # boot_params
    mov esi, msg
    call print
    mov esi, [ebx + 0x228]      # cmd_line_ptr
    call print
    mov esi, nl
    call print
    mov al, [ebx + 0x210]       # type_of_loader: 0xff
    out 0xf4, al
    hlt
""" + _PRINT.format(n=1) + """
msg: .ascii "payload ok: "
    .byte 0
nl: .byte 10, 0
"""

# The decompressor, assembled for its load address; after the copy, EBP holds
# how far it moved ({delta}) and every label is addressed through it.  Its
# payload follows it: u32 out_len, u32 in_len, u32 method (0 stored, 1 lz), data.
STUB_SRC = """
start:
    lea esp, [esi + 0x1e4 + 4]  # boot_params.scratch as the first stack, as Linux's startup_32
    mov ebx, esi
    mov esi, hello
    call print
    # self-relocation: copy [start, end of payload) to RELOC, continue there
    mov esi, {load}
    mov ecx, blob
    sub ecx, {load}
    add ecx, 12
    add ecx, [blob + 4]
    mov edi, {reloc}
    rep movsb
    mov eax, moved
    add eax, {delta}
    jmp eax
moved:
    mov esp, {reloc}            # a real stack, below the copy, inside init_size
    mov ebp, {delta}
    lea esi, [ebp + blob + 12]
    mov ecx, [ebp + blob + 4]
    lea edx, [esi + ecx]        # end of input
    mov edi, {payload}
    cmp dword ptr [ebp + blob + 8], 0
    jne lz
    rep movsb
    jmp go
lz:
    cmp esi, edx
    jae go
    movzx ecx, byte ptr [esi]
    inc esi
    test cl, 0x80
    jnz match
    inc ecx                     # literal run of cl + 1 bytes
    rep movsb
    jmp lz
match:
    and ecx, 0x7f
    add ecx, 3
    movzx eax, word ptr [esi]
    add esi, 2
    push esi
    mov esi, edi
    sub esi, eax
    rep movsb                   # may overlap: byte by byte, as LZ77 wants
    pop esi
    jmp lz
go:
    mov esi, ebx
    mov eax, {payload}
    jmp eax
""" + _PRINT.format(n=2) + """
hello: .ascii "stub: decompressing"
    .byte 10, 0
    .align 4
blob:
"""


def _asm(src: str, addr: int) -> bytes:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_32).asm(src, addr)
    return bytes(code)


def lz_compress(data: bytes) -> bytes:
    """Greedy LZ77: literal runs (token n < 0x80: n + 1 bytes follow) and matches
    (token 0x80 | length - 3, then a 16-bit distance back)."""
    out, lit, i = bytearray(), bytearray(), 0

    def flush():
        while lit:
            chunk = lit[:128]
            out.append(len(chunk) - 1)
            out.extend(chunk)
            del lit[:128]

    while i < len(data):
        best_len, best_dist = 0, 0
        for j in range(max(0, i - 4096), i):
            n = 0
            while n < 130 and i + n < len(data) and data[j + n] == data[i + n]:
                n += 1
            if n > best_len:
                best_len, best_dist = n, i - j
        if best_len >= 3:
            flush()
            out.append(0x80 | (best_len - 3))
            out += struct.pack("<H", best_dist)
            i += best_len
        else:
            lit.append(data[i])
            i += 1
    flush()
    return bytes(out)


def lz_decompress(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(data):
        t = data[i]
        i += 1
        if t < 0x80:
            out += data[i:i + t + 1]
            i += t + 1
        else:
            dist = struct.unpack_from("<H", data, i)[0]
            i += 2
            for _ in range((t & 0x7F) + 3):
                out.append(out[-dist])
    return bytes(out)


def boot_image(compressed: bool, relocatable: bool = False, version: int = 0x020F,
               load: int = 0x100000) -> bytes:
    payload = _asm(PAYLOAD_SRC, PAYLOAD) + b"\x90" * 64 + b"padding " * 40   # something to compress
    body = lz_compress(payload) if compressed else payload
    assert not compressed or lz_decompress(body) == payload
    stub = _asm(STUB_SRC.format(reloc=RELOC, payload=PAYLOAD, load=load, delta=RELOC - load), load)
    blob = struct.pack("<III", len(payload), len(body), int(compressed)) + body
    pm = stub + blob
    setup = bytearray(2 * 512)
    setup[0x1F1] = 1                                  # setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x66"                  # jmp over the header
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01                               # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)    # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x100000)    # kernel_alignment
    setup[0x234] = int(relocatable)
    struct.pack_into("<I", setup, 0x238, 255)         # cmdline_size
    struct.pack_into("<II", setup, 0x248, len(stub) + 12, len(body))
    struct.pack_into("<Q", setup, 0x258, load)        # pref_address
    struct.pack_into("<I", setup, 0x260, INIT_SIZE)
    return bytes(setup) + pm


EXPECTED = f"stub: decompressing\npayload ok: {CMDLINE}\n".encode()


def _run(path, mode: str):
    img = load_image(str(path), mem_bytes=16 << 20, cmdline=CMDLINE)
    return img, VM(img, MachineConfig(mem_mib=16, mode=mode), stdout=None).run()


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "lz"])
def test_image_boots_through_its_own_decompressor_in_every_mode(tmp_path, compressed):
    path = tmp_path / "bzImage"
    path.write_bytes(boot_image(compressed))
    results = {}
    for mode in ("emulate", "trap", "bt"):
        img, r = _run(path, mode)
        assert (r.reason, r.exit_status, r.serial) == ("debug-exit", 0xFF, EXPECTED), (mode, r.message)
        results[mode] = r.retired
    assert results["trap"] == results["bt"] == results["emulate"]
    assert img.entry == 0x100000 and img.regs["esi"] == BOOT_PARAMS_ADDR
    assert img.info["loader"].startswith("boot protocol") and img.info["load_addr"] == 0x100000


def test_a_relocatable_image_is_loaded_at_pref_address(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(boot_image(True, relocatable=True, load=0x200000))
    img, r = _run(path, "emulate")
    assert img.entry == 0x200000 and img.segments[0].addr == 0x200000
    params = next(s for s in img.segments if s.addr == BOOT_PARAMS_ADDR).data
    assert struct.unpack_from("<I", params, 0x214)[0] == 0x200000      # code32_start
    assert r.serial == EXPECTED


def test_host_unpacking_is_still_an_option_and_refuses_what_it_cannot_unpack(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(boot_image(True))
    with pytest.raises(BadInput, match="carries an unknown payload"):
        load_image(str(path), cmdline=CMDLINE, linux_unpack=True)


@pytest.mark.parametrize("version,message", [(0x0201, "predates 2.02"), (0x0100, "old zImage")])
def test_what_the_protocol_cannot_express_is_refused_in_one_line(tmp_path, version, message):
    path = tmp_path / "bzImage"
    path.write_bytes(boot_image(False, version=version))
    with pytest.raises(BadInput, match=message) as err:
        load_image(str(path))
    assert "\n" not in str(err.value)


def test_the_kernel_reserves_init_size_from_where_it_runs(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(boot_image(False))
    rd = tmp_path / "rd"
    rd.write_bytes(b"r" * 4096)
    img = load_image(str(path), mem_bytes=16 << 20, initrd=str(rd))
    assert img.info["initrd_addr"] >= 0x100000 + INIT_SIZE
    with pytest.raises(BadInput, match="needs RAM up to 0x900000"):
        load_image(str(path), mem_bytes=8 << 20)
