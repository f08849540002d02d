/* GuestMemory.translate's native walk (runtime/memory.py): the guest's page
 * tables read straight from the host memory behind guest RAM, the control
 * registers and EFER straight from the live CPU state (offsets calibrated by
 * runtime/quirks.py).  The walk itself is runtime/pagewalk.h, shared with the
 * instruction clock.
 *
 * `Walker.translate(linear, access)` returns the physical address (>= 0), or
 * -(error code + 1) for a #PF: one call, no exception object, no ctypes
 * round trip (the Python walk took ~37 us; this is well under a microsecond).
 * With CR0.PG clear it returns `linear` itself.
 *
 * `walk(ram, cr0, cr3, cr4, efer, linear, access)` is the same walk over a
 * buffer with explicit registers, for tests (tests/runtime/test_native_walk.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "pagewalk.h"

typedef struct {
    const uint8_t *host;
    uint64_t size;
} Ram;

/* Tables live in guest RAM only: an entry outside it fails the walk (as the
 * Python walk's `_pt_read`), even where the hypervisor area is mapped. */
static const uint8_t *ram_range(void *ctx, uint64_t pa, uint64_t n)
{
    Ram *r = ctx;
    if (pa > r->size || n > r->size - pa)
        return NULL;
    return r->host + pa;
}

static PyObject *result(bool ok, uint64_t pa, uint32_t err)
{
    if (ok)
        return PyLong_FromUnsignedLongLong(pa);
    return PyLong_FromLongLong(-(long long)err - 1);
}

typedef struct {
    PyObject_HEAD
    Ram ram;
    const uint8_t *env;
    Py_ssize_t cr0_off, cr3_off, cr4_off, efer_off;
    uint64_t walks;
} Walker;

static inline uint64_t env_u64(const uint8_t *env, Py_ssize_t off)
{
    uint64_t v;
    memcpy(&v, env + off, 8);
    return v;
}

static int Walker_init(Walker *self, PyObject *args, PyObject *kw)
{
    unsigned long long host, size, env;
    if (!PyArg_ParseTuple(args, "KKKnnnn", &host, &size, &env, &self->cr0_off, &self->cr3_off,
                          &self->cr4_off, &self->efer_off))
        return -1;
    if (!host || !env) {
        PyErr_SetString(PyExc_ValueError, "Walker needs the host RAM and the live CPU state");
        return -1;
    }
    self->ram.host = (const uint8_t *)(uintptr_t)host;
    self->ram.size = size;
    self->env = (const uint8_t *)(uintptr_t)env;
    self->walks = 0;
    return 0;
}

static PyObject *Walker_translate(Walker *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "translate(linear, access)");
        return NULL;
    }
    unsigned long long linear = PyLong_AsUnsignedLongLongMask(args[0]);
    unsigned long access = PyLong_AsUnsignedLongMask(args[1]);
    if (PyErr_Occurred())
        return NULL;
    PwRegs r = {env_u64(self->env, self->cr0_off), env_u64(self->env, self->cr3_off),
                env_u64(self->env, self->cr4_off), env_u64(self->env, self->efer_off)};
    linear &= 0xFFFFFFFFu;
    if (!(r.cr0 & PW_CR0_PG))
        return PyLong_FromUnsignedLongLong(linear);
    self->walks++;
    uint64_t pa = 0;
    uint32_t err = 0;
    bool ok = pw_walk(&r, ram_range, &self->ram, linear, (unsigned)access, &pa, &err);
    return result(ok, pa, err);
}

static PyObject *Walker_get_walks(Walker *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->walks);
}

static PyMethodDef Walker_methods[] = {
    {"translate", (PyCFunction)(void (*)(void))Walker_translate, METH_FASTCALL,
     "translate(linear, access): physical address, or -(#PF error code + 1)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Walker_getset[] = {
    {"walks", (getter)Walker_get_walks, NULL, "page walks made (paging on)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._walk.Walker",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Walker(ram_host, ram_bytes, env, cr0_off, cr3_off, cr4_off, efer_off)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Walker_init,
    .tp_methods = Walker_methods,
    .tp_getset = Walker_getset,
};

static PyObject *walk(PyObject *mod, PyObject *args)
{
    Py_buffer buf;
    unsigned long long cr0, cr3, cr4, efer, linear;
    unsigned int access;
    if (!PyArg_ParseTuple(args, "y*KKKKKI", &buf, &cr0, &cr3, &cr4, &efer, &linear, &access))
        return NULL;
    Ram ram = {buf.buf, (uint64_t)buf.len};
    PwRegs r = {cr0, cr3, cr4, efer};
    uint64_t pa = 0;
    uint32_t err = 0;
    bool ok = pw_walk(&r, ram_range, &ram, linear, access, &pa, &err);
    PyBuffer_Release(&buf);
    return result(ok, pa, err);
}

static PyMethodDef module_methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(ram, cr0, cr3, cr4, efer, linear, access): the walk over a buffer (paging assumed on)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef walk_module = {
    PyModuleDef_HEAD_INIT, "runtime._walk", "The VMM's native page walk.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__walk(void)
{
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&walk_module);
    if (!m)
        return NULL;
    Py_INCREF(&WalkerType);
    if (PyModule_AddObject(m, "Walker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(&WalkerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
