/* Port I/O answered without a Python exit where a device allows it
 * (runtime/iofast.py; issue 19).
 *
 * This module owns the engine's UC_HOOK_INSN hooks for `in` and `out`
 * (Unicorn calls the first hook registered for the instruction and takes its
 * value).  Devices stay the one definition of what a port does: a device
 * *publishes* through runtime/iofast.py
 *   - the value a one-byte read of a port returns while reading it has no side
 *     effect (the UART's line-status register with no error pending),
 *   - which ports take one-byte writes into a queue while a write's only effect
 *     is the device's own (the UART's transmit register when no interrupt,
 *     loopback or divisor latch is involved): the queue is replayed through the
 *     device's own `write` (the I/O bus) before the next I/O exit and at the end
 *     of every slice, so the device sees every byte in order, in the state it
 *     published them for;
 *   - a PIT channel's counting state, from which a one-byte read of its port
 *     is computed at the running instruction's virtual time ("The PIT's
 *     counter reads" below), and a counter-latch command done (timer_latch);
 *   - the 8259 pair's registers, shared in place ("The 8259's mask and EOI");
 *   - the ports no device claims (publish_floating: reads 0xFF, writes queued).
 * Everything else calls the VM's Python hook (the slow path), which first
 * drains the queue.  Counts of the accesses answered here are handed to the
 * bus's per-port figures at each drain, so `io_by_port` is unchanged.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PORTS 0x10000
#define QUEUE 4096

typedef uint32_t (*in_cb_t)(void *uc, uint32_t port, int size, void *ud);
typedef void (*out_cb_t)(void *uc, uint32_t port, int size, uint32_t value, void *ud);
typedef void (*site_flags_t)(void *clock);
typedef uint64_t (*vtime_t)(void *clock);

/* A PIT channel as runtime/devices/pit.py publishes it ("The PIT's counter
 * reads" below): enough to compute Channel.count at any virtual time. */
#define TIMERS 3
typedef struct {
    bool on;                    /* published: one-byte reads are answered here */
    uint8_t mode;               /* 0, 2 or 3 (the only ones published) */
    uint8_t access;             /* 1 lo, 2 hi, 3 lo/hi (runtime/devices/regs.py) */
    bool high_next;             /* the lo/hi read flip-flop, owned here while on */
    uint8_t latch[2];           /* a count latch's bytes still to read, in order */
    uint8_t nlatch;             /* how many (0-2), owned here while on */
    uint32_t n;                 /* reload, 1..0x10000 (binary only) */
    int64_t base;               /* elapsed_base */
    int64_t since;              /* run_since, or -1: stopped */
} Timer;

typedef struct {
    PyObject_HEAD
    int16_t *rd;                /* port -> published byte for a one-byte read, -1: slow */
    uint8_t *sink;              /* port -> 1: one-byte writes are queued */
    uint32_t *counts;           /* port -> accesses answered here since the last take */
    uint16_t touched[256];      /* ports with a nonzero count (up to 256, then scan) */
    int ntouched;
    bool overflow;
    in_cb_t slow_in;
    out_cb_t slow_out;
    bool enabled;
    uint16_t qport[QUEUE];
    uint8_t qval[QUEUE];
    int nq;
    uint64_t fast_reads, fast_writes;
    site_flags_t site_flags;    /* the clock's lazy-flags repair (runtime/_clock.c), or NULL */
    void *clock;
    /* the PIT's channels (ports base..base+2) and the clock's virtual time */
    Timer timer[TIMERS];
    uint32_t timer_port;
    vtime_t vtime;              /* NULL: no timer is answered here */
    uint64_t cpu_hz, pit_hz;
    uint64_t timer_reads, timer_latches;
    /* the 8259 pair's registers, shared with runtime/devices/pic.py ("The 8259's
     * mask and EOI" below); NULL: not published */
    Py_buffer pic_buf;
    uint8_t *pic;
    uint64_t pic_native;
} IoFast;

static inline void count(IoFast *f, uint32_t port)
{
    if (f->counts[port]++ == 0) {
        if (f->ntouched < 256)
            f->touched[f->ntouched++] = (uint16_t)port;
        else
            f->overflow = true;
    }
}

/* -- The PIT's counter reads ---------------------------------------------------------
 * Linux's quick_pit_calibrate reads channel 2's count ~21,000 times per boot
 * (issue 19).  The count is a function of virtual time, so it is computed here
 * as runtime/devices/pit.py's Channel.count computes it: ticks = now * PIT_HZ
 * // cpu_hz with `now` the running instruction's virtual time (the clock's
 * vtime_now, the value VM.now() gives the slow path), elapsed = elapsed_base
 * + (ticks - run_since), then the mode's formula.  The Python model publishes
 * a channel only while a read has no effect other than the lo/hi flip-flop
 * or popping a count latch's bytes (no status latch, binary, a count loaded,
 * mode 0, 2 or 3); the flip-flop and the latch bytes left live here while
 * published and Python takes them back (timer_take) before touching the
 * channel, then republishes.  (Linux's i8253 reads channel 0 by a latch
 * command, an exit, then two reads of the latch, answered here.) */
static uint32_t timer_count(IoFast *f, Timer *t)
{
    uint64_t now = f->vtime(f->clock);
    int64_t ticks = (int64_t)((unsigned __int128)now * f->pit_hz / f->cpu_hz);
    uint64_t e = (uint64_t)(t->base + (t->since >= 0 ? ticks - t->since : 0));
    uint64_t n = t->n, c;
    if (t->mode == 2) {
        c = n - e % n;
    } else if (t->mode == 3) {
        uint64_t phase = e % n, half = (n + 1) / 2;
        c = n - 2 * (phase < half ? phase : phase - half);
    } else {
        c = n - e;                              /* counts on through zero */
    }
    return (uint32_t)(c & 0xFFFF);
}

static uint32_t timer_read(IoFast *f, Timer *t)
{
    if (t->nlatch) {                            /* a latched count reads first */
        uint32_t v = t->latch[0];
        t->latch[0] = t->latch[1];
        t->nlatch--;
        return v;
    }
    uint32_t c = timer_count(f, t);
    if (t->access == 1)
        return c & 0xFF;
    if (t->access == 2)
        return (c >> 8) & 0xFF;
    bool high = t->high_next;
    t->high_next = !high;
    return high ? (c >> 8) & 0xFF : c & 0xFF;
}

/* The counter-latch command (`out 0x43` with access bits 00) for a published
 * channel, as runtime/devices/pit.py Channel.latch_count does it: the count at
 * the running instruction's virtual time goes into the latch bytes this module
 * owns while the channel is published (low byte only, high only, or low then
 * high, by the access mode); a latch still unread holds (the command does
 * nothing).  Linux's i8253 read of channel 0 is this command then two reads.
 * Any other control word (a mode, the read-back command, an unpublished
 * channel) exits. */
static bool timer_latch(IoFast *f, uint32_t value)
{
    uint32_t sel = (value >> 6) & 3;
    if (sel == 3 || ((value >> 4) & 3) != 0 || !f->timer[sel].on)
        return false;
    Timer *t = &f->timer[sel];
    if (t->nlatch == 0) {
        uint32_t c = timer_count(f, t);
        uint8_t lo = c & 0xFF, hi = (c >> 8) & 0xFF;
        if (t->access == 1) {
            t->latch[0] = lo;
            t->nlatch = 1;
        } else if (t->access == 2) {
            t->latch[0] = hi;
            t->nlatch = 1;
        } else {
            t->latch[0] = lo;
            t->latch[1] = hi;
            t->nlatch = 2;
        }
    }
    f->timer_latches++;
    return true;
}

/* -- The 8259's mask and EOI ---------------------------------------------------------
 * Linux's timer tick masks, acknowledges (specific EOI) and unmasks IRQ 0 on
 * the master (mask_and_ack_8259A: `in 0x21`, `out 0x21`, `out 0x20`; then
 * `out 0x21`).  runtime/devices/pic.py keeps each chip's IRR, IMR, ISR, lowest
 * priority and initialisation step in one bytearray whose memory this module
 * shares (PIC_* offsets below), so a change made here is the Python model's
 * own state at once: nothing is queued or taken back.  A one-byte access is
 * answered here only while both chips are operational (no ICW sequence under
 * way) and only in forms that cannot change the CPU's interrupt line: the
 * line is the master's pending() (pic.py), which is None whenever neither
 * chip has a request in IRR that its IMR lets through, whatever ISR and the
 * priorities hold.  So
 *   - a read of the data port returns IMR (it changes nothing);
 *   - a mask write (OCW1) or a non-specific (0x20) or specific (0x60-0x67)
 *     EOI is done here when no unmasked request exists before it and none
 *     after it (for a mask write: IRR & ~new IMR is 0 on that chip): the line
 *     is low before and after, as the Python model would leave it, and the
 *     VM's after-access work (runtime/vm.py _after_device_access: halt the
 *     slice for an interrupt to deliver, set the clock's interrupt window)
 *     has nothing to do.
 * Everything else (ICWs, OCW3, rotations, the command port's reads, a write
 * that could raise or drop the line) exits to the Python model. */
enum { PIC_IRR, PIC_IMR, PIC_ISR, PIC_LOWEST, PIC_INIT, PIC_CHIP };

static bool pic_quiet(const uint8_t *p)
{
    return ((p[PIC_IRR] & ~p[PIC_IMR]) | (p[PIC_CHIP + PIC_IRR] & ~p[PIC_CHIP + PIC_IMR])) == 0;
}

/* the chip (0 master, 1 slave) and register (0 command, 1 data) of a port, or -1 */
static int pic_chip(uint32_t port)
{
    if ((port & ~1u) == 0x20)
        return 0;
    if ((port & ~1u) == 0xA0)
        return 1;
    return -1;
}

static bool pic_read(IoFast *f, uint32_t port, uint32_t *value)
{
    uint8_t *p = f->pic;
    int chip = pic_chip(port);
    if (!p || chip < 0 || !(port & 1) || p[PIC_INIT] || p[PIC_CHIP + PIC_INIT])
        return false;
    *value = p[chip * PIC_CHIP + PIC_IMR];
    return true;
}

static bool pic_write(IoFast *f, uint32_t port, uint32_t value)
{
    uint8_t *p = f->pic;
    int chip = pic_chip(port);
    if (!p || chip < 0 || p[PIC_INIT] || p[PIC_CHIP + PIC_INIT] || !pic_quiet(p))
        return false;
    uint8_t *c = p + chip * PIC_CHIP;
    value &= 0xFF;
    if (port & 1) {                                     /* OCW1: the mask */
        if (c[PIC_IRR] & ~value)
            return false;                               /* would unmask a request */
        c[PIC_IMR] = (uint8_t)value;
        return true;
    }
    if ((value & 0xF8) == 0x60) {                       /* specific EOI */
        c[PIC_ISR] &= (uint8_t)~(1u << (value & 7));
        return true;
    }
    if (value == 0x20) {                                /* non-specific EOI */
        for (int i = 0; i < 8; i++) {                   /* the highest priority in service */
            int line = (c[PIC_LOWEST] + 1 + i) & 7;
            if (c[PIC_ISR] & (1u << line)) {
                c[PIC_ISR] &= (uint8_t)~(1u << line);
                break;
            }
        }
        return true;
    }
    return false;
}

static uint32_t in_hook(void *uc, uint32_t port, int size, void *ud)
{
    IoFast *f = ud;
    if (f->site_flags)
        f->site_flags(f->clock);
    port &= 0xFFFF;
    if (f->enabled && size == 1 && f->rd[port] >= 0) {
        f->fast_reads++;
        count(f, port);
        return (uint32_t)f->rd[port];
    }
    uint32_t value;
    if (f->enabled && size == 1 && pic_read(f, port, &value)) {
        f->fast_reads++;
        f->pic_native++;
        count(f, port);
        return value;
    }
    uint32_t ti = port - f->timer_port;
    if (f->enabled && size == 1 && ti < TIMERS && f->timer[ti].on && f->vtime) {
        f->fast_reads++;
        f->timer_reads++;
        count(f, port);
        return timer_read(f, &f->timer[ti]);
    }
    return f->slow_in(uc, port, size, NULL);
}

static void out_hook(void *uc, uint32_t port, int size, uint32_t value, void *ud)
{
    IoFast *f = ud;
    if (f->site_flags)
        f->site_flags(f->clock);
    port &= 0xFFFF;
    if (f->enabled && size == 1) {
        bool done = false;
        if (f->vtime && port == f->timer_port + TIMERS)
            done = timer_latch(f, value);
        else if (pic_write(f, port, value)) {
            f->pic_native++;
            done = true;
        }
        if (done) {
            f->fast_writes++;
            count(f, port);
            return;
        }
    }
    if (f->enabled && size == 1 && f->sink[port] && f->nq < QUEUE) {
        f->qport[f->nq] = (uint16_t)port;
        f->qval[f->nq] = (uint8_t)value;
        f->nq++;
        f->fast_writes++;
        return;
    }
    f->slow_out(uc, port, size, value, NULL);
}

static void IoFast_dealloc(IoFast *f)
{
    free(f->rd);
    free(f->sink);
    free(f->counts);
    if (f->pic)
        PyBuffer_Release(&f->pic_buf);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* IoFast(slow in callback address, slow out callback address) */
static int IoFast_init(IoFast *f, PyObject *args, PyObject *kw)
{
    unsigned long long si, so;
    if (!PyArg_ParseTuple(args, "KK", &si, &so))
        return -1;
    f->slow_in = (in_cb_t)(uintptr_t)si;
    f->slow_out = (out_cb_t)(uintptr_t)so;
    f->rd = malloc(PORTS * sizeof(int16_t));
    f->sink = calloc(PORTS, 1);
    f->counts = calloc(PORTS, sizeof(uint32_t));
    if (!f->rd || !f->sink || !f->counts) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < PORTS; i++)
        f->rd[i] = -1;
    f->enabled = true;
    return 0;
}

static bool port_arg(PyObject *args, unsigned int *port, PyObject **val)
{
    if (!PyArg_ParseTuple(args, "IO", port, val))
        return false;
    if (*port >= PORTS) {
        PyErr_SetString(PyExc_ValueError, "port outside 0-0xffff");
        return false;
    }
    return true;
}

/* set_site_flags(function address, clock object address): called first in
 * every port access (an in/out right after another is a sync site) */
static PyObject *IoFast_set_site_flags(IoFast *f, PyObject *args)
{
    unsigned long long fn, clock;
    if (!PyArg_ParseTuple(args, "KK", &fn, &clock))
        return NULL;
    f->site_flags = (site_flags_t)(uintptr_t)fn;
    f->clock = (void *)(uintptr_t)clock;
    Py_RETURN_NONE;
}

/* set_timer_clock(vtime fn address, clock object address, first port, cpu_hz, pit_hz) */
static PyObject *IoFast_set_timer_clock(IoFast *f, PyObject *args)
{
    unsigned long long fn, clock, cpu_hz, pit_hz;
    unsigned int port;
    if (!PyArg_ParseTuple(args, "KKIKK", &fn, &clock, &port, &cpu_hz, &pit_hz))
        return NULL;
    if (!cpu_hz || !pit_hz || port > PORTS - TIMERS) {
        PyErr_SetString(PyExc_ValueError, "bad timer clock");
        return NULL;
    }
    f->vtime = (vtime_t)(uintptr_t)fn;
    f->clock = (void *)(uintptr_t)clock;
    f->timer_port = port;
    f->cpu_hz = cpu_hz;
    f->pit_hz = pit_hz;
    Py_RETURN_NONE;
}

/* publish_timer(index, None or (mode, access, n, elapsed_base, run_since or -1, high_next,
 *                                latch bytes)) */
static PyObject *IoFast_publish_timer(IoFast *f, PyObject *args)
{
    unsigned int i;
    PyObject *v;
    if (!PyArg_ParseTuple(args, "IO", &i, &v))
        return NULL;
    if (i >= TIMERS) {
        PyErr_SetString(PyExc_ValueError, "timer index outside 0-2");
        return NULL;
    }
    Timer *t = &f->timer[i];
    if (v == Py_None) {
        t->on = false;
        Py_RETURN_NONE;
    }
    unsigned int mode, access, n;
    long long base, since;
    int high;
    const char *latch;
    Py_ssize_t nlatch;
    if (!PyArg_ParseTuple(v, "IIILLpy#", &mode, &access, &n, &base, &since, &high, &latch, &nlatch))
        return NULL;
    if (!(mode == 0 || mode == 2 || mode == 3) || access < 1 || access > 3 || n < 1
        || n > 0x10000 || base < 0 || since < -1 || nlatch > 2) {
        PyErr_SetString(PyExc_ValueError, "a timer state the native read does not model");
        return NULL;
    }
    t->mode = (uint8_t)mode;
    t->access = (uint8_t)access;
    t->n = n;
    t->base = base;
    t->since = since;
    t->high_next = high;
    memcpy(t->latch, latch, (size_t)nlatch);
    t->nlatch = (uint8_t)nlatch;
    t->on = true;
    Py_RETURN_NONE;
}

/* timer_take(index) -> (the lo/hi read flip-flop (True: the next read is the
 * high byte), the latch bytes not yet read) */
static PyObject *IoFast_timer_take(IoFast *f, PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i >= TIMERS) {
        PyErr_SetString(PyExc_ValueError, "timer index outside 0-2");
        return NULL;
    }
    Timer *t = &f->timer[i];
    return Py_BuildValue("(Ny#)", PyBool_FromLong(t->high_next), (const char *)t->latch,
                         (Py_ssize_t)t->nlatch);
}

/* publish_pic(bytearray or None): the 8259 pair's shared registers (PIC_*
 * offsets, two chips of PIC_CHIP bytes) */
static PyObject *IoFast_publish_pic(IoFast *f, PyObject *arg)
{
    if (f->pic) {
        PyBuffer_Release(&f->pic_buf);
        f->pic = NULL;
    }
    if (arg == Py_None)
        Py_RETURN_NONE;
    if (!PyByteArray_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "the 8259 registers are a bytearray");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &f->pic_buf, PyBUF_WRITABLE) < 0)
        return NULL;
    if (f->pic_buf.len != 2 * PIC_CHIP) {
        PyBuffer_Release(&f->pic_buf);
        PyErr_SetString(PyExc_ValueError, "the 8259 registers are two chips' bytes");
        return NULL;
    }
    f->pic = f->pic_buf.buf;
    Py_RETURN_NONE;
}

/* publish_floating(bytes of 0x10000 flags): the ports no device claims: a
 * one-byte read floats to 0xFF and a write is queued (the bus's replay counts
 * it as the unhandled write it is; runtime/iofast.py hands the reads' counts
 * to the bus's unhandled figures) */
static PyObject *IoFast_publish_floating(IoFast *f, PyObject *arg)
{
    char *b;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(arg, &b, &n) < 0)
        return NULL;
    if (n != PORTS) {
        PyErr_SetString(PyExc_ValueError, "one flag per port");
        return NULL;
    }
    for (int i = 0; i < PORTS; i++) {
        if (b[i]) {
            f->rd[i] = 0xFF;
            f->sink[i] = 1;
        }
    }
    Py_RETURN_NONE;
}

/* publish_read(port, byte or None) */
static PyObject *IoFast_publish_read(IoFast *f, PyObject *args)
{
    unsigned int port;
    PyObject *v;
    if (!port_arg(args, &port, &v))
        return NULL;
    if (v == Py_None) {
        f->rd[port] = -1;
        Py_RETURN_NONE;
    }
    long b = PyLong_AsLong(v);
    if (b == -1 && PyErr_Occurred())
        return NULL;
    if (b < 0 || b > 0xFF) {
        PyErr_SetString(PyExc_ValueError, "a published read is one byte");
        return NULL;
    }
    f->rd[port] = (int16_t)b;
    Py_RETURN_NONE;
}

/* publish_sink(port, on) */
static PyObject *IoFast_publish_sink(IoFast *f, PyObject *args)
{
    unsigned int port;
    PyObject *v;
    if (!port_arg(args, &port, &v))
        return NULL;
    int on = PyObject_IsTrue(v);
    if (on < 0)
        return NULL;
    f->sink[port] = (uint8_t)on;
    Py_RETURN_NONE;
}

/* take() -> (bytes of (port lo, port hi, value) triples queued, [(port, reads answered)]) */
static PyObject *IoFast_take(IoFast *f, PyObject *unused)
{
    PyObject *q = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)f->nq * 3);
    if (!q)
        return NULL;
    char *p = PyBytes_AS_STRING(q);
    for (int i = 0; i < f->nq; i++) {
        p[3 * i] = (char)(f->qport[i] & 0xFF);
        p[3 * i + 1] = (char)(f->qport[i] >> 8);
        p[3 * i + 2] = (char)f->qval[i];
    }
    f->nq = 0;
    PyObject *counts = PyList_New(0);
    if (!counts) {
        Py_DECREF(q);
        return NULL;
    }
    int n = f->overflow ? PORTS : f->ntouched;
    for (int i = 0; i < n; i++) {
        uint32_t port = f->overflow ? (uint32_t)i : f->touched[i];
        if (!f->counts[port])
            continue;
        PyObject *t = Py_BuildValue("(II)", port, f->counts[port]);
        f->counts[port] = 0;
        if (!t || PyList_Append(counts, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(q);
            Py_DECREF(counts);
            return NULL;
        }
        Py_DECREF(t);
    }
    f->ntouched = 0;
    f->overflow = false;
    return Py_BuildValue("(NN)", q, counts);
}

static PyObject *IoFast_pending(IoFast *f, PyObject *unused)
{
    return PyBool_FromLong(f->nq > 0 || f->ntouched > 0 || f->overflow);
}

static PyObject *IoFast_get_enabled(IoFast *f, void *u) { return PyBool_FromLong(f->enabled); }
static int IoFast_set_enabled(IoFast *f, PyObject *v, void *u)
{
    int on = PyObject_IsTrue(v);
    if (on < 0)
        return -1;
    f->enabled = on;
    return 0;
}
static PyObject *IoFast_get_reads(IoFast *f, void *u) { return PyLong_FromUnsignedLongLong(f->fast_reads); }
static PyObject *IoFast_get_writes(IoFast *f, void *u) { return PyLong_FromUnsignedLongLong(f->fast_writes); }
static PyObject *IoFast_get_timer_reads(IoFast *f, void *u) { return PyLong_FromUnsignedLongLong(f->timer_reads); }
static PyObject *IoFast_get_timer_latches(IoFast *f, void *u) { return PyLong_FromUnsignedLongLong(f->timer_latches); }
static PyObject *IoFast_get_pic_native(IoFast *f, void *u) { return PyLong_FromUnsignedLongLong(f->pic_native); }

static PyMethodDef IoFast_methods[] = {
    {"set_site_flags", (PyCFunction)IoFast_set_site_flags, METH_VARARGS,
     "set_site_flags(fn, clock): the clock's lazy-flags repair, called first in every port access"},
    {"set_timer_clock", (PyCFunction)IoFast_set_timer_clock, METH_VARARGS,
     "set_timer_clock(vtime fn, clock, first port, cpu_hz, pit_hz): the PIT's reads may be answered"},
    {"publish_timer", (PyCFunction)IoFast_publish_timer, METH_VARARGS,
     "publish_timer(i, None or (mode, access, n, elapsed_base, run_since or -1, high_next, latch))"},
    {"timer_take", (PyCFunction)IoFast_timer_take, METH_O,
     "timer_take(i) -> (lo/hi read flip-flop, latch bytes left) as the reads here left them"},
    {"publish_pic", (PyCFunction)IoFast_publish_pic, METH_O,
     "publish_pic(bytearray or None): the 8259 pair's registers, shared (runtime/devices/pic.py)"},
    {"publish_floating", (PyCFunction)IoFast_publish_floating, METH_O,
     "publish_floating(0x10000 flag bytes): ports no device claims float natively"},
    {"publish_read", (PyCFunction)IoFast_publish_read, METH_VARARGS,
     "publish_read(port, byte or None): what a one-byte read returns with no exit"},
    {"publish_sink", (PyCFunction)IoFast_publish_sink, METH_VARARGS,
     "publish_sink(port, on): one-byte writes to port are queued"},
    {"take", (PyCFunction)IoFast_take, METH_NOARGS,
     "take() -> (queued writes as (lo, hi, value) byte triples, [(port, reads)]); clears both"},
    {"pending", (PyCFunction)IoFast_pending, METH_NOARGS, "queued writes or counts to take"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef IoFast_getset[] = {
    {"enabled", (getter)IoFast_get_enabled, (setter)IoFast_set_enabled,
     "False: every access takes the slow path", NULL},
    {"fast_reads", (getter)IoFast_get_reads, NULL, "reads answered here", NULL},
    {"fast_writes", (getter)IoFast_get_writes, NULL, "writes queued here", NULL},
    {"timer_reads", (getter)IoFast_get_timer_reads, NULL, "PIT counter reads answered here", NULL},
    {"timer_latches", (getter)IoFast_get_timer_latches, NULL, "PIT counter-latch commands done here", NULL},
    {"pic_native", (getter)IoFast_get_pic_native, NULL, "8259 accesses answered here", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject IoFastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._iofast.IoFast",
    .tp_basicsize = sizeof(IoFast),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)IoFast_init,
    .tp_dealloc = (destructor)IoFast_dealloc,
    .tp_methods = IoFast_methods,
    .tp_getset = IoFast_getset,
    .tp_doc = "Native in/out hooks answering what devices publish (runtime/iofast.py).",
};

static PyObject *callbacks(PyObject *m, PyObject *unused)
{
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)&in_hook,
                         (unsigned long long)(uintptr_t)&out_hook);
}

static PyMethodDef module_methods[] = {
    {"callbacks", callbacks, METH_NOARGS, "(in hook, out hook) C function addresses"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef iofastmodule = {PyModuleDef_HEAD_INIT, "_iofast", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__iofast(void)
{
    if (PyType_Ready(&IoFastType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&iofastmodule);
    if (!m)
        return NULL;
    Py_INCREF(&IoFastType);
    if (PyModule_AddObject(m, "IoFast", (PyObject *)&IoFastType) < 0) {
        Py_DECREF(&IoFastType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
