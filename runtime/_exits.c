/* The VM's UC_HOOK_INTR callback, native (runtime/exits.py), with one exit
 * handled without Python: `invlpg` at the guest kernel's CPL 1.
 *
 * Why: under trap and bt every `invlpg` of the guest kernel raises #GP (it is
 * privileged at CPL 1) and the VMM's answer is fixed: flush Unicorn's TLB (it
 * has no per-page form; flushing more is always allowed architecturally),
 * step over the instruction.  Debian's kernel executes 69,963 of them at one
 * site in its first 20 M instructions; through the Python exit path each cost
 * ~12 us, here well under one.
 *
 * What the Python path does for such an exit, done the same way here:
 *   - the clock's cut at EIP, the instruction counted as started (the clock's
 *     own function, runtime/_clock.c `cut_address`);
 *   - the exception in flight cleared (runtime/quirks.py take_fault);
 *   - the TLB flush (uc_ctl), EIP past the instruction (uc_reg_write), the
 *     engine's PC-sync flag cleared after the write (quirks.resync_pc);
 *   - the counters `exits`, `exit_sites[eip]`, `faults_emulated["invlpg"]`:
 *     counted here per site and added to the run's counters by the VM at the
 *     end of the slice (`take_counts`), so they are exact between slices.
 * Anything else (another vector, CPL, instruction or prefix, an instruction
 * not wholly in one page of RAM, a walk that fails, the run's end already
 * decided: `armed` false) goes to the Python callback, unchanged.
 *
 * The second: `mov cr3, r32` at CPL 1 under two-level paging (Linux's
 * text_poke and context switches: 15,736 per 150 M instructions under bt),
 * answered as runtime/trap.py `write_cr(3)` does: the virtual CR3 in the state
 * page, the real CR3 (a TLB flush), and the hypervisor area's directory slot
 * moved to the new directory (runtime/paging.py `HyperMapping.sync`): the
 * guest's value back into the old directory, the VMM's entry into the new one,
 * the new one's guest value kept.  The slot's state lives here (`Slot`), and
 * HyperMapping reads and writes it through the getset `slot`.  The slot view
 * (runtime/paging.py `SlotView`: the read hooks that show guest loads of the
 * current slot the guest's own value) comes with the slot and follows it
 * through the one routine the Python path uses too (runtime/slotview.h
 * `slotview_place`: the view's record, and its hooks' range moved in place).
 * Whatever the Python path would decide otherwise goes to it: a guest store into the old
 * slot (`notice`), a present guest entry in the new slot (kept: runtime/paging.py), a new
 * slot outside RAM, PAE, paging off, no slot known, an sti shadow, a view
 * whose hooks Python has not made yet.
 *
 * The instruction's bytes are read through the VMM's walk (runtime/pagewalk.h)
 * as the Python decoder reads them (a supervisor read of guest RAM); stubs lie
 * outside RAM, so a stub's fault never takes this path. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pagewalk.h"
#include "slotview.h"

typedef void (*intr_cb_t)(void *uc, uint32_t intno, void *user);
typedef int (*uc_reg_write_t)(void *uc, int regid, const void *value);
typedef int (*uc_reg_read_t)(void *uc, int regid, void *value);
typedef int (*uc_ctl_t)(void *uc, int control, ...);
typedef bool (*cut_t)(void *clock, uint64_t eip, int started);

#define GP_VECTOR 13
#define MAX_SITES 64
#define HF_INHIBIT_IRQ 0x8          /* hflags: an sti/mov-ss shadow (runtime/quirks.py) */
#define PTE_P 1u

enum { KIND_INVLPG, KIND_MOV_CR3, NKINDS };

/* The hypervisor area's directory slot in the current two-level directory
 * (runtime/paging.py): where it is, the VMM's entry, the guest's own value. */
typedef struct {
    bool valid;
    uint64_t addr;
    uint32_t ours, guest;
} Slot;

typedef struct {
    uint8_t *host;                  /* written too: the slot moved by mov cr3 */
    uint64_t size;
} Ram;

typedef struct {
    PyObject_HEAD
    intr_cb_t fallback;
    void *fallback_user;
    uc_reg_write_t reg_write;
    uc_reg_read_t reg_read;
    uc_ctl_t ctl;
    int eip_reg, tlb_flush;
    cut_t cut;
    void *clock;
    uint8_t *env;
    Py_ssize_t hflags, is_int, error_code, old_exception, eip, cr0, cr3, cr4, efer;
    uint8_t *pc_sync;
    Ram ram;
    bool invlpg, armed, movcr3;
    uint64_t site[MAX_SITES], hits[MAX_SITES];
    int kind[MAX_SITES];
    uint32_t nsites;
    uint64_t handled;
    /* mov cr3 */
    int gpr[8];                     /* Unicorn's register ids by ModRM number */
    int cr3_reg;
    uint8_t *vcr3;                  /* the state page's cr3 field (host) */
    uint64_t slot_index;            /* the area's directory index: base >> 22 */
    Slot slot;
    SlotView *view;                 /* the slot's read hooks (a reference), or NULL: none */
    uint64_t inserts;               /* VMM entries written into a directory here */
} Exits;

static const uint8_t *ram_range(void *ctx, uint64_t pa, uint64_t n)
{
    Ram *r = ctx;
    if (pa > r->size || n > r->size - pa)
        return NULL;
    return r->host + pa;
}

static inline uint64_t u64_at(const uint8_t *p, Py_ssize_t off)
{
    uint64_t v;
    memcpy(&v, p + off, 8);
    return v;
}

static inline uint32_t u32_at(const uint8_t *p, Py_ssize_t off)
{
    uint32_t v;
    memcpy(&v, p + off, 4);
    return v;
}

/* Length of `0F 01 /7` (invlpg m) at p (8 readable bytes), or 0 when the bytes
 * are anything else (a register form, a prefix: the Python path decides). */
static unsigned invlpg_length(const uint8_t *p)
{
    if (p[0] != 0x0F || p[1] != 0x01)
        return 0;
    unsigned modrm = p[2], mod = modrm >> 6, rm = modrm & 7;
    if (((modrm >> 3) & 7) != 7 || mod == 3)
        return 0;
    unsigned n = 3;
    if (rm == 4) {                      /* a SIB byte; base 5 with mod 0: disp32 */
        unsigned base = p[3] & 7;
        n += 1;
        if (mod == 0 && base == 5)
            n += 4;
    } else if (mod == 0 && rm == 5) {
        n += 4;
    }
    if (mod == 1)
        n += 1;
    else if (mod == 2)
        n += 4;
    return n;
}

/* The slot counting exits at eip (a new one if need be), or -1 when the table
 * is full: the exit then takes the Python path. */
static long site_slot(Exits *x, uint64_t eip, int kind)
{
    for (uint32_t i = 0; i < x->nsites; i++)
        if (x->site[i] == eip && x->kind[i] == kind)
            return (long)i;
    if (x->nsites == MAX_SITES)
        return -1;
    x->site[x->nsites] = eip;
    x->hits[x->nsites] = 0;
    x->kind[x->nsites] = kind;
    return (long)x->nsites++;
}

/* The instruction's bytes at EIP (8 readable, wholly in one page of RAM) for
 * a #GP at CPL 1 outside an sti shadow, or NULL (the Python path decides). */
static const uint8_t *fault_bytes(Exits *x, uint64_t *eip_out, PwRegs *r)
{
    const uint8_t *env = x->env;
    if ((u32_at(env, x->hflags) & 3) != 1 || (int32_t)u32_at(env, x->is_int) == 1
        || u32_at(env, x->error_code) != 0)
        return NULL;
    uint64_t eip = u32_at(env, x->eip), pa = eip;
    if ((eip & 0xFFF) > 0x1000 - 8)
        return NULL;                    /* the instruction may cross a page */
    *r = (PwRegs){u64_at(env, x->cr0), u64_at(env, x->cr3), u64_at(env, x->cr4), u64_at(env, x->efer)};
    uint32_t err;
    if ((r->cr0 & PW_CR0_PG) && !pw_walk(r, ram_range, &x->ram, eip, 0, &pa, &err))
        return NULL;
    *eip_out = eip;
    return ram_range(&x->ram, pa, 8);
}

/* The exit's end, as the Python path ends it: the clock's cut at EIP (counted
 * as started), the exception in flight cleared, EIP past the instruction. */
static void step_over(Exits *x, void *uc, uint64_t eip, unsigned len, long slot)
{
    uint64_t next = (eip + len) & 0xFFFFFFFFu;
    x->reg_write(uc, x->eip_reg, &next);
    *x->pc_sync = 0;
    x->hits[slot]++;
    x->handled++;
}

static bool try_invlpg(Exits *x, void *uc, uint64_t eip, const uint8_t *p)
{
    unsigned len = invlpg_length(p);
    long slot;
    if (!len || (slot = site_slot(x, eip, KIND_INVLPG)) < 0)
        return false;
    x->cut(x->clock, eip, 1);
    memcpy(x->env + x->old_exception, &(int32_t){-1}, 4);
    if (x->ctl(uc, x->tlb_flush) != 0)
        return false;                   /* cannot happen; the Python path then flushes */
    step_over(x, uc, eip, len, slot);
    return true;
}

static inline uint32_t ram_u32(Exits *x, uint64_t pa)
{
    uint32_t v;
    memcpy(&v, x->ram.host + pa, 4);
    return v;
}

/* `mov cr3, r32` (0F 22 /r, mod 3, reg 3): see the top. */
static bool try_mov_cr3(Exits *x, void *uc, uint64_t eip, const uint8_t *p, const PwRegs *r)
{
    if (p[0] != 0x0F || p[1] != 0x22 || (p[2] >> 6) != 3 || ((p[2] >> 3) & 7) != 3)
        return false;
    if (!x->slot.valid || !(r->cr0 & PW_CR0_PG) || (r->cr4 & PW_CR4_PAE)
        || (u32_at(x->env, x->hflags) & HF_INHIBIT_IRQ))
        return false;
    if (x->view && x->view->nhooks == 0)
        return false;                   /* the view's hooks not made yet: Python makes them */
    uint64_t value = 0;
    if (x->reg_read(uc, x->gpr[p[2] & 7], &value) != 0)
        return false;
    value &= 0xFFFFFFFFu;
    Slot *s = &x->slot;
    if (s->addr + 4 > x->ram.size || ram_u32(x, s->addr) != s->ours)
        return false;                   /* a guest store into the old slot: notice() decides */
    uint64_t want = (value & ~0xFFFull) + x->slot_index * 4;
    if (want + 4 > x->ram.size)
        return false;
    uint32_t raw = ram_u32(x, want), guest = raw == s->ours ? s->guest : raw;
    if (want != s->addr && (guest & PTE_P))
        return false;                   /* the guest maps the area: Python keeps its entry */
    long slot = site_slot(x, eip, KIND_MOV_CR3);
    if (slot < 0)
        return false;
    x->cut(x->clock, eip, 1);
    memcpy(x->env + x->old_exception, &(int32_t){-1}, 4);
    uint32_t v32 = (uint32_t)value;
    memcpy(x->vcr3, &v32, 4);           /* vcpu.set("cr3", value) */
    x->reg_write(uc, x->cr3_reg, &value);     /* flushes the TLB */
    if (want != s->addr) {
        memcpy(x->ram.host + s->addr, &s->guest, 4);       /* the old directory's own value */
        if (raw != s->ours) {
            memcpy(x->ram.host + want, &s->ours, 4);
            x->inserts++;
        }
        s->addr = want;
        s->guest = guest;
    }
    if (x->view) {                      /* the view follows, as HyperMapping._publish does */
        uint64_t ours = s->ours, mine = s->guest;
        int size = 4;
        slotview_place(x->view, 1, &s->addr, &size, &ours, &mine);
    }
    step_over(x, uc, eip, 3, slot);
    return true;
}

static void intr_hook(void *uc, uint32_t intno, void *user)
{
    Exits *x = user;
    if (intno == GP_VECTOR && x->armed && (x->invlpg || x->movcr3)) {
        uint64_t eip;
        PwRegs r;
        const uint8_t *p = fault_bytes(x, &eip, &r);
        if (p && x->invlpg && try_invlpg(x, uc, eip, p))
            return;
        if (p && x->movcr3 && try_mov_cr3(x, uc, eip, p, &r))
            return;
    }
    x->fallback(uc, intno, x->fallback_user);
}

/* Exits(fallback, reg_write, ctl, eip_reg, tlb_flush, cut, clock, env, pc_sync,
 *       (hflags, is_int, error_code, old_exception, eip, cr0, cr3, cr4, efer), ram_host, ram_bytes) */
static int Exits_init(Exits *x, PyObject *args, PyObject *kw)
{
    unsigned long long fallback, reg_write, ctl, cut, clock, env, pc_sync, host, size;
    int eip_reg, tlb_flush;
    if (!PyArg_ParseTuple(args, "KKKiiKKKK(nnnnnnnnn)KK", &fallback, &reg_write, &ctl, &eip_reg, &tlb_flush,
                          &cut, &clock, &env, &pc_sync, &x->hflags, &x->is_int, &x->error_code,
                          &x->old_exception, &x->eip, &x->cr0, &x->cr3, &x->cr4, &x->efer, &host, &size))
        return -1;
    if (!fallback || !reg_write || !ctl || !cut || !clock || !env || !pc_sync || !host) {
        PyErr_SetString(PyExc_ValueError, "Exits needs every address");
        return -1;
    }
    x->fallback = (intr_cb_t)(uintptr_t)fallback;
    x->fallback_user = NULL;
    x->reg_write = (uc_reg_write_t)(uintptr_t)reg_write;
    x->ctl = (uc_ctl_t)(uintptr_t)ctl;
    x->eip_reg = eip_reg;
    x->tlb_flush = tlb_flush;
    x->cut = (cut_t)(uintptr_t)cut;
    x->clock = (void *)(uintptr_t)clock;
    x->env = (uint8_t *)(uintptr_t)env;
    x->pc_sync = (uint8_t *)(uintptr_t)pc_sync;
    x->ram.host = (uint8_t *)(uintptr_t)host;
    x->ram.size = size;
    x->invlpg = false;
    x->movcr3 = false;
    x->armed = true;
    x->nsites = 0;
    x->handled = 0;
    x->slot.valid = false;
    Py_CLEAR(x->view);
    x->inserts = 0;
    return 0;
}

static void Exits_dealloc(Exits *x)
{
    Py_CLEAR(x->view);
    Py_TYPE(x)->tp_free((PyObject *)x);
}

/* enable_mov_cr3(reg_read, (8 register ids by ModRM number), cr3_reg); the
 * slot, the area's directory index and the state page's cr3 field come with
 * each `slot` set (runtime/paging.py publishes them). */
static PyObject *Exits_enable_mov_cr3(Exits *x, PyObject *args)
{
    unsigned long long reg_read;
    int *g = x->gpr;
    if (!PyArg_ParseTuple(args, "K(iiiiiiii)i", &reg_read, &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &g[6],
                          &g[7], &x->cr3_reg))
        return NULL;
    if (!reg_read) {
        PyErr_SetString(PyExc_ValueError, "enable_mov_cr3 needs uc_reg_read");
        return NULL;
    }
    x->reg_read = (uc_reg_read_t)(uintptr_t)reg_read;
    x->movcr3 = true;
    Py_RETURN_NONE;
}

static PyObject *Exits_get_slot(Exits *x, void *unused)
{
    if (!x->slot.valid)
        Py_RETURN_NONE;
    return Py_BuildValue("(KII)", (unsigned long long)x->slot.addr, x->slot.ours, x->slot.guest);
}

static int Exits_set_slot(Exits *x, PyObject *v, void *unused)
{
    if (v == NULL || v == Py_None) {
        x->slot.valid = false;
        Py_CLEAR(x->view);
        return 0;
    }
    unsigned long long addr, index, vcr3;
    unsigned int ours, guest;
    PyObject *view = Py_None;
    if (!PyArg_ParseTuple(v, "KIIKK|O", &addr, &ours, &guest, &index, &vcr3, &view))
        return -1;
    if (!vcr3) {
        PyErr_SetString(PyExc_ValueError, "the slot needs the state page's cr3 field");
        return -1;
    }
    /* The view's type lives in runtime._isolation; its layout is slotview.h. */
    if (view != Py_None && strcmp(Py_TYPE(view)->tp_name, SLOTVIEW_TYPE_NAME) != 0) {
        PyErr_SetString(PyExc_TypeError, "the slot's view must be a " SLOTVIEW_TYPE_NAME);
        return -1;
    }
    Py_XSETREF(x->view, view == Py_None ? NULL : (SlotView *)Py_NewRef(view));
    x->slot = (Slot){true, addr, ours, guest};
    x->slot_index = index;
    x->vcr3 = (uint8_t *)(uintptr_t)vcr3;
    return 0;
}

static PyObject *Exits_get_inserts(Exits *x, void *unused)
{
    return PyLong_FromUnsignedLongLong(x->inserts);
}

static PyObject *Exits_take_counts(Exits *x, PyObject *unused)
{
    PyObject *out = PyList_New(x->nsites);
    if (!out)
        return NULL;
    for (uint32_t i = 0; i < x->nsites; i++) {
        PyObject *t = Py_BuildValue("(KKs)", (unsigned long long)x->site[i], (unsigned long long)x->hits[i],
                                    x->kind[i] == KIND_INVLPG ? "invlpg" : "mov");
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    x->nsites = 0;
    return out;
}

static PyObject *Exits_get_bool(Exits *x, void *which)
{
    return PyBool_FromLong(which ? x->armed : x->invlpg);
}


static int Exits_set_bool(Exits *x, PyObject *v, void *which)
{
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    if (which)
        x->armed = b;
    else
        x->invlpg = b;
    return 0;
}

static PyObject *Exits_get_handled(Exits *x, void *unused)
{
    return PyLong_FromUnsignedLongLong(x->handled);
}

static PyMethodDef Exits_methods[] = {
    {"take_counts", (PyCFunction)Exits_take_counts, METH_NOARGS,
     "[(eip, exits, mnemonic)] handled natively since the last take, and forget them"},
    {"enable_mov_cr3", (PyCFunction)Exits_enable_mov_cr3, METH_VARARGS,
     "handle CPL-1 mov cr3 natively under two-level paging (trap, bt)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Exits_getset[] = {
    {"invlpg", (getter)Exits_get_bool, (setter)Exits_set_bool, "handle CPL-1 invlpg natively (trap, bt)", NULL},
    {"armed", (getter)Exits_get_bool, (setter)Exits_set_bool, "false once the run's end is decided", (void *)1},
    {"handled", (getter)Exits_get_handled, NULL, "exits handled natively so far", NULL},
    {"slot", (getter)Exits_get_slot, (setter)Exits_set_slot,
     "the area's two-level directory slot: (address, VMM entry, guest value[, base >> 22, cr3 field"
     "[, SlotView]]) or None", NULL},
    {"inserts", (getter)Exits_get_inserts, NULL, "VMM entries written into a directory natively", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ExitsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._exits.Exits",
    .tp_basicsize = sizeof(Exits),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The VM's native interrupt hook (runtime/exits.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Exits_init,
    .tp_dealloc = (destructor)Exits_dealloc,
    .tp_methods = Exits_methods,
    .tp_getset = Exits_getset,
};

static PyObject *hook_address(PyObject *m, PyObject *unused)
{
    return PyLong_FromVoidPtr((void *)&intr_hook);
}

static PyObject *length(PyObject *m, PyObject *arg)
{
    Py_buffer b;
    if (!PyArg_Parse(arg, "y*", &b))
        return NULL;
    unsigned n = 0;
    if (b.len >= 8)
        n = invlpg_length(b.buf);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(n);
}

static PyMethodDef module_methods[] = {
    {"hook_address", hook_address, METH_NOARGS, "the UC_HOOK_INTR callback's address (user data: an Exits)"},
    {"invlpg_length", length, METH_O, "invlpg_length(8 bytes): the length of invlpg m there, or 0 (tests)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef exits_module = {
    PyModuleDef_HEAD_INIT, "runtime._exits", "The VM's native interrupt hook.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__exits(void)
{
    if (PyType_Ready(&ExitsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&exits_module);
    if (!m)
        return NULL;
    Py_INCREF(&ExitsType);
    if (PyModule_AddObject(m, "Exits", (PyObject *)&ExitsType) < 0) {
        Py_DECREF(&ExitsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
