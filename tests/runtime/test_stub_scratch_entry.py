"""A stub whose templates share their scratch register (patcher/templates.py
share_scratch) cannot be entered in the middle: a branch found later into such a
template's guest instruction is not redirected into the stub (it would restore a
stale scratch word into the guest's register) but re-planned (runtime/csam.py
_into_patch).  The guest's EAX survives under bt as under emulate.  (The pair
here is two selector stores; the flag templates use no scratch any more.)"""
from conftest import EXIT, raw_guest, run

SRC = """
mov esp, 0x90000
mov ebp, 0x80000
xor ebx, ebx
mov eax, 0x55667788
top:
mov word ptr [ebp], cs
pf:
mov word ptr [ebp + 2], ss
mov ecx, ecx
inc ebx
cmp ebx, 2
je done
mov eax, 0x11223344
lea esi, [pf]
jmp esi
done:
mov edi, eax
movzx edx, word ptr [ebp + 2]
""" + EXIT


def test_a_branch_into_a_template_that_shares_its_scratch_is_replanned():
    img = raw_guest(SRC)
    ref = run(img, "emulate")[1]
    vm, got = run(img, "bt")
    assert ref.regs["edi"] == 0x11223344
    assert got.regs["edi"] == ref.regs["edi"] and got.regs["ebx"] == ref.regs["ebx"] == 2
    assert got.regs["edx"] == ref.regs["edx"]
    assert (got.exit_status, got.retired) == (ref.exit_status, ref.retired)
    assert vm.mode.stats.get("patch_interior_replans") >= 1
    assert vm.mode.stats.get("patch_interior_redirects") == 0
