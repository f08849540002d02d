/* The hypervisor area's guard (runtime/isolation.py): a native Unicorn
 * protection hook (UC_HOOK_MEM_READ_PROT | WRITE_PROT | FETCH_PROT) over the
 * area, which trap and bt map without read/write (and, below the stub cache,
 * without exec) permission for the guest.
 *
 * Why protections and not access hooks: refusing a protection event makes
 * Unicorn abandon the access exactly as it abandons an access to unmapped
 * memory (same error path, the store does not land, the instruction does not
 * complete), which is what emulate does for the same address.  Calling
 * uc_emu_stop from a UC_HOOK_MEM_WRITE hook does not stop the store
 * (tests/runtime/test_isolation_facts.py pins both).
 *
 * Who may touch the area: code running in the stub cache (EIP read from the
 * live CPU state at the calibrated offset runtime/quirks.py uses), and the
 * CPU itself when a guest instruction loads a descriptor from the shadow GDT
 * (segment loads, far transfers, iret, lar/lsl/verr/verw: the accessed bit
 * is written back too).  An allowed read proceeds; an allowed write is done
 * here, because Unicorn 2.1.4 drops a store whose WRITE_PROT event was
 * handled.  Anything else is refused and the first refused address recorded.
 *
 * A descriptor read the guest's code makes (natively, or in a stub that runs
 * its segment load) is also where the CPU under emulate walks to the guest's
 * own GDT page and sets the accessed bits of the entries that map it; the
 * shadow's page is the VMM's, so the guard sets them (`mark_gdt_read`).  The
 * accessed-bit write-back that follows sets D too: runtime/trap.py
 * `_on_shadow_gdt_write`, where that bit is copied into the guest's table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "slotview.h"

#define UC_MEM_WRITE_PROT 22
#define UC_MEM_FETCH_PROT 24

typedef struct {
    PyObject_HEAD
    uint8_t *env;                   /* live CPU state */
    Py_ssize_t eip_off, esp_off;
    Py_ssize_t cr0_off, cr3_off, cr4_off;   /* paging: EIP is linear (-1: unknown) */
    uint64_t base, size;            /* the area */
    uint64_t stubs_lo, stubs_hi;    /* the stub cache: [lo, hi) */
    uint64_t gdt_lo, gdt_hi;        /* the shadow GDT: [lo, hi) */
    uint8_t *host;                  /* the area's host memory */
    uint64_t guest_code_len;
    uint8_t *guest_code;            /* per stub-cache byte: 1 = a relocated guest instruction */
    uint8_t *ram;                   /* guest RAM's host memory (decoding EIP) */
    uint64_t ram_size;
    Py_ssize_t gdtr_base_off;       /* the guest GDTR's base (u32) in the area's host memory */
    int open;                       /* 1 while the VMM (not guest code) runs: allow all */
    /* results */
    int refused;                    /* 0, or the first refused event's type */
    uint64_t refused_addr;
    uint64_t stub_ok, cpu_ok, refusals;
    uint64_t gdt_marks;             /* accessed bits set in the entries mapping the guest's GDT */
} Guard;

static inline uint32_t env_u32(Guard *g, Py_ssize_t off)
{
    uint32_t v;
    memcpy(&v, g->env + off, 4);
    return v;
}

static inline uint64_t env_u64(Guard *g, Py_ssize_t off)
{
    uint64_t v;
    memcpy(&v, g->env + off, 8);
    return v;
}

static bool ram_entry(Guard *g, uint64_t pa, int size, uint64_t *out)
{
    if (!g->ram || pa + size > g->ram_size)
        return false;
    *out = 0;
    memcpy(out, g->ram + pa, size);
    return true;
}

/* Linear -> physical through the guest's tables (two-level or PAE), read from
 * guest RAM: the same walk as runtime/memory.py without the permission checks
 * (the CPU already fetched the instruction).  false: not mapped. */
static bool to_phys(Guard *g, uint32_t va, uint64_t *pa)
{
    *pa = va;
    if (g->cr0_off < 0 || !(env_u64(g, g->cr0_off) & 0x80000000u))
        return true;
    uint64_t cr3 = env_u64(g, g->cr3_off), cr4 = env_u64(g, g->cr4_off), e;
    const uint64_t addr = 0x000000FFFFFFF000ull;
    if (cr4 & 0x20) {
        if (!ram_entry(g, (cr3 & 0xFFFFFFE0u) + (va >> 30) * 8, 8, &e) || !(e & 1))
            return false;
        if (!ram_entry(g, (e & addr) + ((va >> 21) & 0x1FF) * 8, 8, &e) || !(e & 1))
            return false;
        if (e & 0x80) {
            *pa = (e & addr & ~0x1FFFFFull) | (va & 0x1FFFFF);
            return true;
        }
        if (!ram_entry(g, (e & addr) + ((va >> 12) & 0x1FF) * 8, 8, &e) || !(e & 1))
            return false;
        *pa = (e & addr) | (va & 0xFFF);
        return true;
    }
    if (!ram_entry(g, (cr3 & 0xFFFFF000u) + (va >> 22) * 4, 4, &e) || !(e & 1))
        return false;
    if ((e & 0x80) && (cr4 & 0x10)) {
        *pa = (((e >> 13) & 0xFF) << 32) | (e & 0xFFC00000u) | (va & 0x3FFFFF);
        return true;
    }
    if (!ram_entry(g, (e & 0xFFFFF000u) + ((va >> 12) & 0x3FF) * 4, 4, &e) || !(e & 1))
        return false;
    *pa = (e & 0xFFFFF000u) | (va & 0xFFF);
    return true;
}

/* Set the accessed bit of the entries the CPU's walk to linear `va` reads
 * (directory entry and table entry, or the large page's entry), as
 * runtime/memory.py `_mark_page` does for the VMM's own accesses: only the
 * low byte of an entry is written, only where the bit is clear, and nothing
 * past a not-present entry. */
static void set_accessed(Guard *g, uint64_t pa)
{
    if (!(g->ram[pa] & 0x20)) {
        g->ram[pa] |= 0x20;
        g->gdt_marks++;
    }
}

static void mark_page(Guard *g, uint32_t va)
{
    if (g->cr0_off < 0 || !g->ram || !(env_u64(g, g->cr0_off) & 0x80000000u))
        return;
    uint64_t cr3 = env_u64(g, g->cr3_off), cr4 = env_u64(g, g->cr4_off), e, pa;
    const uint64_t addr = 0x000000FFFFFFF000ull;
    if (cr4 & 0x20) {
        if (!ram_entry(g, (cr3 & 0xFFFFFFE0u) + (va >> 30) * 8, 8, &e) || !(e & 1))
            return;
        pa = (e & addr) + ((va >> 21) & 0x1FF) * 8;
        if (!ram_entry(g, pa, 8, &e) || !(e & 1))
            return;
        set_accessed(g, pa);
        if (e & 0x80)
            return;
        pa = (e & addr) + ((va >> 12) & 0x1FF) * 8;
        if (!ram_entry(g, pa, 8, &e) || !(e & 1))
            return;
        set_accessed(g, pa);
        return;
    }
    pa = (cr3 & 0xFFFFF000u) + (va >> 22) * 4;
    if (!ram_entry(g, pa, 4, &e) || !(e & 1))
        return;
    set_accessed(g, pa);
    if ((e & 0x80) && (cr4 & 0x10))
        return;
    pa = (e & 0xFFFFF000u) + ((va >> 12) & 0x3FF) * 4;
    if (!ram_entry(g, pa, 4, &e) || !(e & 1))
        return;
    set_accessed(g, pa);
}

/* The CPU read `size` bytes of the shadow GDT at `addr` for a guest
 * instruction: under emulate that read was of the guest's own table, at
 * the guest GDTR's base plus the same offset (the shadow keeps the guest's
 * layout and limit: runtime/trap.py `sync_shadow_gdt`). */
static void mark_gdt_read(Guard *g, uint64_t addr, int size)
{
    if (g->gdtr_base_off < 0)
        return;
    uint32_t base;
    memcpy(&base, g->host + g->gdtr_base_off, 4);
    uint32_t va = base + (uint32_t)(addr - g->gdt_lo);
    uint32_t last = va + (uint32_t)(size > 0 ? size - 1 : 0);
    mark_page(g, va);
    if ((last & ~0xFFFu) != (va & ~0xFFFu))
        mark_page(g, last);
}

/* Up to 16 bytes of the instruction at linear `eip`, page by page. */
static uint64_t code_at(Guard *g, uint32_t eip, uint8_t *buf)
{
    uint64_t got = 0;
    while (got < 16) {
        uint64_t pa;
        uint32_t va = eip + (uint32_t)got;
        if (!to_phys(g, va, &pa) || !g->ram || pa >= g->ram_size)
            break;
        uint64_t n = 0x1000 - (va & 0xFFF);
        if (n > 16 - got)
            n = 16 - got;
        if (n > g->ram_size - pa)
            n = g->ram_size - pa;
        memcpy(buf + got, g->ram + pa, n);
        got += n;
    }
    return got;
}

/* Does the instruction at `eip` read descriptors implicitly?  The opcode set
 * of the instructions that load a segment register or look a selector up in
 * the GDT.  `eip` is guest code (read through the guest's page tables when
 * paging is on), or guest code in the stub cache (a relocated copy, or the
 * guest's own segment load a template runs: patcher/templates.py). */
static bool loads_descriptors(Guard *g, uint32_t eip)
{
    uint8_t code[16];
    uint64_t left;
    const uint8_t *p;
    if (eip >= g->stubs_lo && eip < g->stubs_hi && g->host) {
        left = g->base + g->size - eip;
        p = g->host + (eip - g->base);
    } else {
        left = code_at(g, eip, code);
        if (!left)
            return false;
        p = code;
    }
    unsigned i = 0;
    while (i < 14 && i < left) {        /* prefixes */
        uint8_t b = p[i];
        if (b == 0x66 || b == 0x67 || b == 0xF0 || b == 0xF2 || b == 0xF3 || b == 0x2E ||
            b == 0x36 || b == 0x3E || b == 0x26 || b == 0x64 || b == 0x65)
            i++;
        else
            break;
    }
    if (i + 1 >= left)
        return false;
    uint8_t op = p[i], next = p[i + 1];
    switch (op) {
    case 0x8E: case 0x07: case 0x17: case 0x1F:     /* mov sreg, pop es/ss/ds */
    case 0xC4: case 0xC5:                           /* les, lds */
    case 0x9A: case 0xEA:                           /* call/jmp far ptr16:32 */
    case 0xCA: case 0xCB: case 0xCF:                /* retf, iret */
        return true;
    case 0xFF:                                      /* call/jmp far m16:32 */
        return ((next >> 3) & 7) == 3 || ((next >> 3) & 7) == 5;
    case 0x0F:
        if (next == 0xA1 || next == 0xA9 || next == 0xB2 || next == 0xB4 || next == 0xB5 ||
            next == 0x02 || next == 0x03)           /* pop fs/gs, lss/lfs/lgs, lar, lsl */
            return true;
        if (next == 0x00 && i + 2 < left) {         /* verr, verw */
            unsigned reg = (p[i + 2] >> 3) & 7;
            return reg == 4 || reg == 5;
        }
        return false;
    default:
        return false;
    }
}

/* A descriptor access the CPU makes for the guest instruction at EIP: a
 * dword of a shadow-GDT entry (the two halves read, the accessed bit
 * written), not on the guest's stack (pop sreg, retf and iret read their
 * operands there first). */
static bool cpu_descriptor_access(Guard *g, uint32_t eip, uint64_t addr, int size)
{
    if (size != 4 || (addr & 3) || addr < g->gdt_lo || addr + 4 > g->gdt_hi)
        return false;
    uint32_t esp = env_u32(g, g->esp_off);
    if (addr >= esp && addr < (uint64_t)esp + 24)
        return false;
    return loads_descriptors(g, eip);
}

/* An allowed store: Unicorn drops the store of a handled WRITE_PROT event. */
static bool vmm_write(Guard *g, uint64_t addr, int size, int64_t value)
{
    if (addr < g->base || size < 1 || size > 8 || addr - g->base + size > g->size)
        return false;
    memcpy(g->host + (addr - g->base), &value, size);   /* little-endian host */
    return true;
}

static bool prot_hook(void *uc, int type, uint64_t addr, int size, int64_t value, void *user)
{
    Guard *g = (Guard *)user;
    (void)uc;
    if (g->open)            /* the VMM's own register writes load descriptors too */
        return type != UC_MEM_WRITE_PROT || vmm_write(g, addr, size, value);
    if (type != UC_MEM_FETCH_PROT && g->env) {
        uint32_t eip = env_u32(g, g->eip_off);
        bool stub = eip >= g->stubs_lo && eip < g->stubs_hi && !g->guest_code[eip - g->stubs_lo];
        if (stub || cpu_descriptor_access(g, eip, addr, size)) {
            if (stub)
                g->stub_ok++;
            else
                g->cpu_ok++;
            if (type == UC_MEM_WRITE_PROT && !vmm_write(g, addr, size, value))
                goto refuse;
            if (type != UC_MEM_WRITE_PROT && addr >= g->gdt_lo && addr < g->gdt_hi)
                mark_gdt_read(g, addr, size);
            return true;
        }
    }
refuse:
    g->refusals++;
    if (!g->refused) {
        g->refused = type;
        g->refused_addr = addr;
    }
    return false;
}

static int Guard_init(Guard *g, PyObject *args, PyObject *kw)
{
    unsigned long long env, base, size, stubs_lo, stubs_hi, gdt_lo, gdt_hi, host, ram, ram_size;
    Py_ssize_t eip_off, esp_off, gdtr_base_off, cr0_off = -1, cr3_off = -1, cr4_off = -1;
    if (!PyArg_ParseTuple(args, "KnnKKKKKKKKKn|nnn", &env, &eip_off, &esp_off, &base, &size,
                          &stubs_lo, &stubs_hi, &gdt_lo, &gdt_hi, &host, &ram, &ram_size,
                          &gdtr_base_off, &cr0_off, &cr3_off, &cr4_off))
        return -1;
    if (gdtr_base_off >= 0 && (uint64_t)gdtr_base_off + 4 > size) {
        PyErr_SetString(PyExc_ValueError, "the GDTR field lies outside the area");
        return -1;
    }
    g->env = (uint8_t *)(uintptr_t)env;
    g->eip_off = eip_off;
    g->esp_off = esp_off;
    g->cr0_off = cr0_off;
    g->cr3_off = cr3_off;
    g->cr4_off = cr4_off;
    g->base = base;
    g->size = size;
    g->stubs_lo = stubs_lo;
    g->stubs_hi = stubs_hi;
    g->gdt_lo = gdt_lo;
    g->gdt_hi = gdt_hi;
    g->host = (uint8_t *)(uintptr_t)host;
    g->ram = (uint8_t *)(uintptr_t)ram;
    g->ram_size = ram_size;
    g->gdtr_base_off = gdtr_base_off;
    if (!g->guest_code || stubs_hi - stubs_lo != g->guest_code_len) {
        PyMem_Free(g->guest_code);
        g->guest_code_len = stubs_hi > stubs_lo ? stubs_hi - stubs_lo : 1;
        g->guest_code = PyMem_Calloc(g->guest_code_len, 1);
        if (!g->guest_code) {
            PyErr_NoMemory();
            return -1;
        }
    }
    g->open = 1;
    g->refused = 0;
    g->refused_addr = 0;
    g->stub_ok = g->cpu_ok = g->refusals = g->gdt_marks = 0;
    return 0;
}

static PyObject *Guard_take(Guard *g, PyObject *unused)
{
    /* (event type, address) of the first refused access since the last take, or None */
    if (!g->refused)
        Py_RETURN_NONE;
    PyObject *r = Py_BuildValue("(iK)", g->refused, (unsigned long long)g->refused_addr);
    g->refused = 0;
    return r;
}

static PyObject *Guard_mark(Guard *g, PyObject *args)
{
    /* mark(lo, hi, flag): stub-cache addresses [lo, hi) hold guest instructions (1) or not */
    unsigned long long lo, hi;
    int flag;
    if (!PyArg_ParseTuple(args, "KKp", &lo, &hi, &flag))
        return NULL;
    if (lo < g->stubs_lo || hi > g->stubs_hi || lo > hi) {
        PyErr_SetString(PyExc_ValueError, "range outside the stub cache");
        return NULL;
    }
    memset(g->guest_code + (lo - g->stubs_lo), flag, hi - lo);
    Py_RETURN_NONE;
}

static void Guard_dealloc(Guard *g)
{
    PyMem_Free(g->guest_code);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyObject *Guard_stats(Guard *g, PyObject *unused)
{
    return Py_BuildValue("{sKsKsKsK}", "stub_accesses", (unsigned long long)g->stub_ok,
                         "descriptor_accesses", (unsigned long long)g->cpu_ok,
                         "refused_accesses", (unsigned long long)g->refusals,
                         "gdt_accessed_bits_set", (unsigned long long)g->gdt_marks);
}

static PyMethodDef Guard_methods[] = {
    {"take", (PyCFunction)Guard_take, METH_NOARGS, "first refused (type, address) or None; clears it"},
    {"mark", (PyCFunction)Guard_mark, METH_VARARGS, "mark(lo, hi, flag): relocated guest code in the stub cache"},
    {"stats", (PyCFunction)Guard_stats, METH_NOARGS, "counters of the guard"},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Guard_members[] = {
    {"open", T_INT, offsetof(Guard, open), 0, "1 while the VMM runs (everything allowed)"},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._isolation.Guard",
    .tp_basicsize = sizeof(Guard),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Guard_init,
    .tp_dealloc = (destructor)Guard_dealloc,
    .tp_methods = Guard_methods,
    .tp_members = Guard_members,
    .tp_doc = "Guards the hypervisor area (see runtime/isolation.py).",
};

/* -- The VMM's directory entry hidden from guest loads (runtime/paging.py) ----------
 * Under paging the current directory's slot for the area holds the VMM's entry,
 * which a guest load of the slot must not see (emulate has nothing there: Linux's
 * setup_arch copies swapper_pg_dir's kernel entries into initial_page_table with
 * memcpy, and would copy the VMM's entry too).  The same pair of hooks as the
 * clock's hidden patch bytes (runtime/_clock.c): UC_HOOK_MEM_READ runs before the
 * load and puts the guest's value into the slot, UC_HOOK_MEM_READ_AFTER puts the
 * VMM's entry back, from the same helper with nothing in between
 * (tests/runtime/test_hidden_patches.py).  The CPU's own page walks do not call
 * memory hooks, so the area stays reachable (tests/runtime/test_paging.py).  A
 * slot that does not hold the VMM's entry (the guest stored into it and the VMM
 * has not noticed yet) is the guest's and is left alone.  The state and the
 * routine that places the slots and moves the hooks with them are
 * runtime/slotview.h, shared with the native `mov cr3` (runtime/_exits.c). */
static void slot_before(void *uc, int type, uint64_t addr, int size, int64_t value, void *user)
{
    SlotView *v = (SlotView *)user;
    (void)uc; (void)type; (void)value;
    for (int k = 0; k < v->n; k++) {
        uint64_t cur = 0;
        if (addr >= v->addr[k] + v->size[k] || addr + size <= v->addr[k] || (v->swapped & (1 << k)))
            continue;
        memcpy(&cur, v->ram + v->addr[k], v->size[k]);
        if (cur != v->ours[k])
            continue;
        memcpy(v->ram + v->addr[k], &v->guest[k], v->size[k]);
        v->swapped |= 1 << k;
        v->hidden++;
    }
}

static void slot_after(void *uc, int type, uint64_t addr, int size, int64_t value, void *user)
{
    SlotView *v = (SlotView *)user;
    (void)uc; (void)type; (void)addr; (void)size; (void)value;
    for (int k = 0; k < v->n; k++)
        if (v->swapped & (1 << k))
            memcpy(v->ram + v->addr[k], &v->ours[k], v->size[k]);
    v->swapped = 0;
}

static int SlotView_init(SlotView *v, PyObject *args, PyObject *kw)
{
    unsigned long long ram, ram_size;
    if (!PyArg_ParseTuple(args, "KK", &ram, &ram_size))
        return -1;
    v->ram = (uint8_t *)(uintptr_t)ram;
    v->ram_size = ram_size;
    v->n = 0;
    v->swapped = 0;
    v->hidden = 0;
    v->nhooks = 0;
    v->lo = v->hi = 0;
    v->moves = 0;
    return 0;
}

static PyObject *SlotView_set(SlotView *v, PyObject *args)
{
    /* set([(address, size, ours, guest), ...]): the current directory's slots */
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "O", &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "a sequence of slots");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > SLOTVIEW_MAX_SLOTS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many slots");
        return NULL;
    }
    uint64_t addr[SLOTVIEW_MAX_SLOTS], ours[SLOTVIEW_MAX_SLOTS], guest[SLOTVIEW_MAX_SLOTS];
    int size[SLOTVIEW_MAX_SLOTS];
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned long long a, o, g;
        int sz;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, k), "KiKK", &a, &sz, &o, &g)) {
            Py_DECREF(fast);
            return NULL;
        }
        if ((sz != 4 && sz != 8) || a + sz > v->ram_size) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "a slot outside RAM or of another size");
            return NULL;
        }
        addr[k] = a;
        size[k] = sz;
        ours[k] = o;
        guest[k] = g;
    }
    Py_DECREF(fast);
    slotview_place(v, (int)n, addr, size, ours, guest);
    Py_RETURN_NONE;
}

static PyObject *SlotView_range(SlotView *v, PyObject *unused)
{
    /* the read hooks' range for the current slots, (lo, hi) inclusive, or None */
    if (v->n == 0)
        Py_RETURN_NONE;
    uint64_t lo, hi;
    slotview_range(v, &lo, &hi);
    return Py_BuildValue("(KK)", (unsigned long long)lo, (unsigned long long)hi);
}

static PyObject *SlotView_attach(SlotView *v, PyObject *args)
{
    /* attach((before, after), (begin_off, end_off)): the read hooks' Unicorn
     * handles, which follow the slots from now on (slotview_place), placed on
     * the current slots' range */
    unsigned long long before, after;
    Py_ssize_t begin_off, end_off;
    if (!PyArg_ParseTuple(args, "(KK)(nn)", &before, &after, &begin_off, &end_off))
        return NULL;
    if (!before || !after || begin_off < 0 || end_off < 0 || v->n == 0) {
        PyErr_SetString(PyExc_ValueError, "attach needs two hooks, their range offsets and a slot");
        return NULL;
    }
    v->hook[0] = (uint8_t *)(uintptr_t)before;
    v->hook[1] = (uint8_t *)(uintptr_t)after;
    v->begin_off = begin_off;
    v->end_off = end_off;
    v->nhooks = 2;
    uint64_t lo, hi;
    slotview_range(v, &lo, &hi);
    slotview_move_hooks(v, lo, hi);
    v->moves = 0;                   /* placed, not moved */
    Py_RETURN_NONE;
}

static PyObject *SlotView_get_hooked(SlotView *v, void *unused)
{
    if (v->nhooks == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)v->lo, (unsigned long long)v->hi);
}

static PyObject *SlotView_get_slots(SlotView *v, void *unused)
{
    PyObject *out = PyList_New(v->n);
    if (!out)
        return NULL;
    for (int k = 0; k < v->n; k++) {
        PyObject *t = Py_BuildValue("(KiKK)", (unsigned long long)v->addr[k], v->size[k],
                                    (unsigned long long)v->ours[k], (unsigned long long)v->guest[k]);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, t);
    }
    return out;
}

static PyObject *SlotView_stats(SlotView *v, PyObject *unused)
{
    return Py_BuildValue("{sKsK}", "slot_reads_hidden", (unsigned long long)v->hidden,
                         "slot_hook_moves", (unsigned long long)v->moves);
}

static PyGetSetDef SlotView_getset[] = {
    {"hooked", (getter)SlotView_get_hooked, NULL, "the read hooks' range (lo, hi), or None before attach", NULL},
    {"slots", (getter)SlotView_get_slots, NULL, "[(address, size, ours, guest)] of the current slots", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef SlotView_methods[] = {
    {"set", (PyCFunction)SlotView_set, METH_VARARGS, "set(slots): (address, size, ours, guest) of each"},
    {"range", (PyCFunction)SlotView_range, METH_NOARGS, "the read hooks' range for the current slots"},
    {"attach", (PyCFunction)SlotView_attach, METH_VARARGS, "attach((before, after), (begin_off, end_off))"},
    {"stats", (PyCFunction)SlotView_stats, METH_NOARGS, "counters"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject SlotViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = SLOTVIEW_TYPE_NAME,
    .tp_basicsize = sizeof(SlotView),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SlotView_init,
    .tp_methods = SlotView_methods,
    .tp_getset = SlotView_getset,
    .tp_doc = "The VMM's directory entry hidden from guest loads (see runtime/paging.py).",
};

static PyObject *slot_callbacks(PyObject *m, PyObject *unused)
{
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)&slot_before,
                         (unsigned long long)(uintptr_t)&slot_after);
}

/* A write hook that does nothing.  While any UC_HOOK_MEM_WRITE is registered,
 * Unicorn 2.1.4 does not cache a read that prot_hook allowed: every later read of
 * that page raises the protection event again (without one, the first allowed
 * stub read would leave the page readable for the guest too).  Pinned in
 * tests/runtime/test_isolation_facts.py. */
static void keep_checking(void *uc, int type, uint64_t addr, int size, int64_t value, void *user)
{
    (void)uc; (void)type; (void)addr; (void)size; (void)value; (void)user;
}

static PyObject *keeper(PyObject *m, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)&keep_checking);
}

static PyObject *callback(PyObject *m, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)&prot_hook);
}

static PyMethodDef module_methods[] = {
    {"callback", callback, METH_NOARGS, "the protection hook's C function address"},
    {"keeper", keeper, METH_NOARGS, "the empty write hook's C function address"},
    {"slot_callbacks", slot_callbacks, METH_NOARGS, "the slot view's read hooks (before, after)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef isolationmodule = {PyModuleDef_HEAD_INIT, "_isolation", NULL, -1,
                                             module_methods};

PyMODINIT_FUNC PyInit__isolation(void)
{
    if (PyType_Ready(&GuardType) < 0 || PyType_Ready(&SlotViewType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&isolationmodule);
    if (!m)
        return NULL;
    Py_INCREF(&GuardType);
    if (PyModule_AddObject(m, "Guard", (PyObject *)&GuardType) < 0) {
        Py_DECREF(&GuardType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SlotViewType);
    if (PyModule_AddObject(m, "SlotView", (PyObject *)&SlotViewType) < 0) {
        Py_DECREF(&SlotViewType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
