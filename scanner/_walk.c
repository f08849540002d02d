/* The scanner's worklist walk in C: the same rules as scanner/scan.py's
 * Python walk (`Scanner._run_worklist`, `_decode_block`, `_check`, the fast
 * cases of `_branch`), line for line, so both build the identical CFG
 * (tests/scanner/test_engines.py compares them on demos, random bytes and
 * Debian's kernel).
 *
 * Why C: the Python walk spends ~1.2 us per instruction in the interpreter on
 * top of capstone's own Python binding (~1-2 us per instruction for
 * disasm_lite's tuples).  Here capstone's cs_disasm_iter is called directly,
 * an instruction costs no Python object at all (its bytes and size go into
 * the block's Insns; only branches and sensitive candidates make objects),
 * and a block costs the networkx dicts it must have.  What remains is mostly
 * capstone and those dicts (docs/benchmarks.md has the profile).
 *
 * No capstone header is needed at build time: the functions come in as
 * addresses from the capstone Python package already loaded (ctypes), and
 * the cs_insn layout below is checked against capstone's own ctypes
 * structure before the walker is used (scanner/native.py).  Rare cases
 * (splitting a block, far branches, branches through memory, bytes that
 * cross a page boundary, the reason an address cannot be decoded) call back
 * into the Python methods that define them, so there is one definition of
 * each rule.
 */
#define _GNU_SOURCE          /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    unsigned int id;
    uint64_t address;
    uint16_t size;
    uint8_t bytes[24];
    char mnemonic[32];
    char op_str[160];
    void *detail;
} cs_insn_t;

typedef bool (*cs_disasm_iter_t)(size_t, const uint8_t **, size_t *, uint64_t *, cs_insn_t *);
typedef cs_insn_t *(*cs_malloc_t)(size_t);
typedef void (*cs_free_t)(cs_insn_t *, size_t);

#define PAGE 4096u
#define PAGE_MASK 0xFFFFF000ull
#define ADDR_LIMIT 0x100000000ull
#define MAX_INSN 15
#define START 1
#define CONT 2
#define ZERO_RUN_LIMIT 8
#define PAGE_CACHE 64
#define BLOCK_MARK 1        /* scanner/cfg.py NodeMarks */
#define BAD_MARK 2

/* Interned strings, made once at import. */
static PyObject *s_kind, *s_site, *s_also, *s_start, *s_end, *s_insns, *s_sensitive,
    *s_block, *s_fallthrough, *s_cond_jump, *s_jump, *s_call, *s_return, *s_unresolved,
    *s_flags, *s_data, *s_sizes, *s_rows, *s_overlap_inside, *s_overlap_bytes, *s_truncated_4g, *s_undecodable,
    *s_zero_fill, *s_jcc, *s_stop, *s_jmp;

typedef struct {
    /* Python objects (borrowed from the argument tuple). */
    PyObject *work, *extend;
    /* The worklist, moved out of the deque for the walk (same order, last
     * in first out) and back into it if the walk stops early. */
    PyObject **stk;
    size_t nstk, capstk;
    PyObject *gnode, *gsucc, *gpred;
    PyObject *pages, *record, *is_free, *mark;
    PyObject *marks, *insns_type, *new_sites, *tset, *tnew, *pending, *touched;
    PyObject *read_mem, *classify, *flow, *target_kinds;
    PyObject *add_bad, *split_block, *branch, *why_not;
    /* Bounded walks (Scanner.walk_bound): past `bound` scanned instructions
     * (-1: none) a branch whose target needs decoding goes to `defer` (a
     * Python callable); `deferred` (CFG.deferred: target -> items) is
     * emptied into the worklist for each target the walk reaches. */
    PyObject *defer, *deferred, *new_unresolved;
    long long bound;
    const uint8_t *maybe_op;    /* catalog.MAYBE_SENSITIVE_OPCODE (512) */
    const uint8_t *prefix;      /* catalog.PREFIX_BYTE (256) */
    /* Mnemonic strings by capstone instruction id, reused while the text
     * matches (a prefix changes the text, not the id). */
    PyObject *mnem_by_id[2048];
    long long max_insns, insns_scanned, cap;
    /* capstone */
    size_t handle;
    cs_disasm_iter_t disasm_iter;
    cs_insn_t *insn;
    long long decoded, reads;
    /* Page windows read this run: base -> bytes (read_mem(base, PAGE + 15)). */
    PyObject *windows;
    /* Node and edge attribute dicts are copies of these (a copy of a small
     * dict clones its key table in one go; filling a new dict builds it). */
    PyObject *node_tmpl, *edge_tmpl;
    uint64_t win_base;
    const uint8_t *win_ptr;
    Py_ssize_t win_len;
    bool win_valid;
    /* The block being decoded: its bytes and one size per instruction. */
    uint8_t *bbuf, *sbuf;
    size_t bcap, scap;
    /* Page map and node mark bytearrays found so far this run, by page
     * (direct-mapped): nothing removes a page's record or replaces its
     * bytearray during a walk, so a pointer found stays good until it ends. */
    uint64_t fc_base[PAGE_CACHE], mc_base[PAGE_CACHE];
    uint8_t *fc_ptr[PAGE_CACHE], *mc_ptr[PAGE_CACHE];
    uint64_t wc_base[PAGE_CACHE];       /* page windows, likewise */
    const uint8_t *wc_ptr[PAGE_CACHE];
    Py_ssize_t wc_len[PAGE_CACHE];
    /* The start of the block decoded last, as the object that keys it in
     * the graph: most links leave from it. */
    uint64_t last_start;
    PyObject *last_start_obj;
} Walk;

/* ---- small helpers ---------------------------------------------------- */

static PyObject *addr_obj(uint64_t a) { return PyLong_FromUnsignedLongLong(a); }

/* rec.flags (a bytearray of PAGE bytes) of the page record for `base`, or
 * NULL without an exception when there is none.  `*err` is set on error. */
static uint8_t *page_flags(Walk *w, uint64_t base, bool create, int *err) {
    unsigned slot = (unsigned)(base >> 12) % PAGE_CACHE;
    if (w->fc_ptr[slot] && w->fc_base[slot] == base) return w->fc_ptr[slot];
    PyObject *k = addr_obj(base);
    if (!k) { *err = 1; return NULL; }
    PyObject *rec = PyDict_GetItemWithError(w->pages, k);   /* borrowed */
    if (!rec) {
        if (PyErr_Occurred() || !create) { Py_DECREF(k); if (PyErr_Occurred()) *err = 1; return NULL; }
        rec = PyObject_CallOneArg(w->record, k);
        if (!rec) { Py_DECREF(k); *err = 1; return NULL; }
        if (PySet_Add(w->touched, k) < 0) { Py_DECREF(rec); Py_DECREF(k); *err = 1; return NULL; }
        Py_DECREF(rec);   /* the page map holds it */
        rec = PyDict_GetItemWithError(w->pages, k);
        if (!rec) { Py_DECREF(k); if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "page record vanished"); *err = 1; return NULL; }
    }
    Py_DECREF(k);
    PyObject *flags = PyObject_GetAttr(rec, s_flags);
    if (!flags) { *err = 1; return NULL; }
    if (!PyByteArray_Check(flags) || PyByteArray_GET_SIZE(flags) != PAGE) {
        Py_DECREF(flags);
        PyErr_SetString(PyExc_TypeError, "page record flags must be a bytearray of 4096 bytes");
        *err = 1;
        return NULL;
    }
    uint8_t *p = (uint8_t *)PyByteArray_AS_STRING(flags);
    Py_DECREF(flags);   /* the record keeps the bytearray alive for the whole run */
    w->fc_base[slot] = base;
    w->fc_ptr[slot] = p;
    return p;
}

static int page_state(Walk *w, uint64_t a, int *err) {
    uint8_t *f = page_flags(w, a & PAGE_MASK, false, err);
    return f ? f[a & 0xFFF] : 0;
}

/* The NodeMarks bytearray of page `base` (cfg.marks.pages), or NULL without
 * an exception when there is none and `create` is false. */
static uint8_t *marks_page(Walk *w, uint64_t base, bool create, int *err) {
    unsigned slot = (unsigned)(base >> 12) % PAGE_CACHE;
    if (w->mc_ptr[slot] && w->mc_base[slot] == base) return w->mc_ptr[slot];
    PyObject *k = addr_obj(base);
    if (!k) { *err = 1; return NULL; }
    PyObject *m = PyDict_GetItemWithError(w->marks, k);   /* borrowed */
    if (!m) {
        if (PyErr_Occurred() || !create) { Py_DECREF(k); if (PyErr_Occurred()) *err = 1; return NULL; }
        m = PyByteArray_FromStringAndSize(NULL, PAGE);
        if (!m) { Py_DECREF(k); *err = 1; return NULL; }
        memset(PyByteArray_AS_STRING(m), 0, PAGE);
        int r = PyDict_SetItem(w->marks, k, m);
        Py_DECREF(m);     /* the marks dict holds it */
        if (r < 0) { Py_DECREF(k); *err = 1; return NULL; }
    }
    Py_DECREF(k);
    if (!PyByteArray_Check(m) || PyByteArray_GET_SIZE(m) != PAGE) {
        PyErr_SetString(PyExc_TypeError, "node marks must be bytearrays of 4096 bytes");
        *err = 1;
        return NULL;
    }
    w->mc_base[slot] = base;
    w->mc_ptr[slot] = (uint8_t *)PyByteArray_AS_STRING(m);
    return w->mc_ptr[slot];
}

/* CFG.block_of for an instruction of a block: the nearest BLOCK_MARK at or
 * below `a`, searched back through scanned bytes.  0: found (*out),
 * 1: none, -1: error. */
static int owner_of(Walk *w, uint64_t a, uint64_t *out) {
    uint64_t base = a & PAGE_MASK;
    size_t len = (size_t)(a - base) + 1;
    for (;;) {
        int err = 0;
        uint8_t *m = marks_page(w, base, false, &err);
        if (err) return -1;
        const uint8_t *hit = m ? memrchr(m, BLOCK_MARK, len) : NULL;
        if (hit) { *out = base + (uint64_t)(hit - m); return 0; }
        uint8_t *f = page_flags(w, base, false, &err);
        if (err) return -1;
        if (!f || !f[0] || base == 0) return 1;
        base -= PAGE;
        len = PAGE;
    }
}

/* `a in graph` for an address: the node marks say where block and bad
 * nodes are (kept by every CFG method, rebuilt by CFG.reindex), a byte
 * read instead of a probe into a table of 380,000 nodes. */
static int is_node(Walk *w, uint64_t a) {
    int err = 0;
    if (a >= ADDR_LIMIT) return 0;
    uint8_t *m = marks_page(w, a & PAGE_MASK, false, &err);
    if (err) return -1;
    return m && m[a & 0xFFF] != 0;
}

/* `bytes(read_mem(addr, n)) or b""`, with n clamped below 4 GiB as Decoder.read does. */
static PyObject *read_bytes(Walk *w, uint64_t addr, uint64_t n) {
    if (n > ADDR_LIMIT - addr) n = ADDR_LIMIT - addr;
    if (n == 0) return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *r = PyObject_CallFunction(w->read_mem, "KK", (unsigned long long)addr,
                                        (unsigned long long)n);
    w->reads++;
    if (!r) return NULL;
    if (r == Py_None || !PyObject_IsTrue(r)) {
        Py_DECREF(r);
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    if (PyBytes_Check(r)) return r;
    PyObject *b = PyBytes_FromObject(r);
    Py_DECREF(r);
    return b;
}

/* Decode the instruction at `a` into w->insn.  1: decoded, 0: nothing there, -1: error. */
static int decode_at(Walk *w, uint64_t a) {
    if (a >= ADDR_LIMIT) return 0;
    uint64_t base = a & PAGE_MASK;
    unsigned slot = (unsigned)(base >> 12) % PAGE_CACHE;
    if ((!w->win_valid || w->win_base != base) && w->wc_ptr[slot] && w->wc_base[slot] == base) {
        w->win_base = base;
        w->win_ptr = w->wc_ptr[slot];
        w->win_len = w->wc_len[slot];
    }
    if (!w->win_valid || w->win_base != base) {
        PyObject *k = addr_obj(base);
        if (!k) return -1;
        PyObject *win = PyDict_GetItemWithError(w->windows, k);
        if (!win) {
            if (PyErr_Occurred()) { Py_DECREF(k); return -1; }
            win = read_bytes(w, base, PAGE + MAX_INSN);
            if (!win) { Py_DECREF(k); return -1; }
            if (PyDict_SetItem(w->windows, k, win) < 0) { Py_DECREF(win); Py_DECREF(k); return -1; }
            Py_DECREF(win);
        }
        Py_DECREF(k);
        w->win_base = base;
        w->win_ptr = (const uint8_t *)PyBytes_AS_STRING(win);
        w->win_len = PyBytes_GET_SIZE(win);
        w->win_valid = true;
        w->wc_base[slot] = base;
        w->wc_ptr[slot] = w->win_ptr;
        w->wc_len[slot] = w->win_len;
    }
    uint64_t off = a - base;
    const uint8_t *p;
    size_t avail;
    uint8_t tmp[MAX_INSN];
    if ((Py_ssize_t)off < w->win_len) {
        /* The window is contiguous memory from the page base: its tail is
         * exactly what reading at `a` gives (or memory ends there). */
        p = w->win_ptr + off;
        avail = (size_t)(w->win_len - (Py_ssize_t)off);
    } else {
        /* The page's first bytes are unmapped (a mapping that starts inside
         * the page): read at the address itself. */
        PyObject *b = read_bytes(w, a, MAX_INSN);
        if (!b) return -1;
        avail = (size_t)PyBytes_GET_SIZE(b);
        if (avail > MAX_INSN) avail = MAX_INSN;
        memcpy(tmp, PyBytes_AS_STRING(b), avail);
        Py_DECREF(b);
        p = tmp;
    }
    if (avail == 0) return 0;
    uint64_t addr = a;
    if (!w->disasm_iter(w->handle, &p, &avail, &addr, w->insn)) return 0;
    w->decoded++;
    return 1;
}

static int streq(PyObject *a, PyObject *b) {
    return a == b || (PyUnicode_Check(a) && PyUnicode_Compare(a, b) == 0);
}

/* d[k] = v, keeping d out of the cyclic GC while everything in it is: an
 * adjacency dict holding edge dicts of ints and strings (CPython untracks a
 * dict only while its values are atomic, and a dict value counts as a
 * container).  380,000 blocks' adjacency dicts otherwise cost a ~0.2 s GC
 * pass after each scan.  Should a container be stored in an edge dict later,
 * the edge dict is tracked again by CPython; the adjacency dict is not, which
 * can only keep a cycle through it alive, never free anything early. */
static int insert_untracked(PyObject *d, PyObject *k, PyObject *v) {
    int was = PyObject_GC_IsTracked(d);
    if (PyDict_SetItem(d, k, v) < 0) return -1;
    if (!was && PyObject_GC_IsTracked(d) && !PyObject_GC_IsTracked(v)) PyObject_GC_UnTrack(d);
    return 0;
}

/* CFG.link(src, dst, kind, site, attrs): src/dst/kind/site/attrs borrowed. */
static int link_edge(Walk *w, PyObject *src, PyObject *dst, PyObject *kind, PyObject *site,
                     PyObject *attrs) {
    PyObject *succ = PyDict_GetItemWithError(w->gsucc, src);
    if (!succ) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, src);
        return -1;
    }
    PyObject *data = PyDict_GetItemWithError(succ, dst);
    int data_existed = data != NULL;
    if (!data) {
        if (PyErr_Occurred()) return -1;
        data = PyDict_Copy(w->edge_tmpl);
        if (!data) return -1;
        if (PyDict_SetItem(data, s_kind, kind) < 0 || PyDict_SetItem(data, s_site, site) < 0 ||
            (attrs && attrs != Py_None && PyDict_Update(data, attrs) < 0) ||
            insert_untracked(succ, dst, data) < 0) {
            Py_DECREF(data);
            return -1;
        }
        PyObject *pred = PyDict_GetItemWithError(w->gpred, dst);
        if (!pred) {
            Py_DECREF(data);
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, dst);
            return -1;
        }
        int r = insert_untracked(pred, src, data);
        Py_DECREF(data);
        if (r < 0) return -1;
    } else {
        PyObject *old = PyDict_GetItemWithError(data, s_kind);
        if (!old) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "kind"); return -1; }
        int same = PyObject_RichCompareBool(old, kind, Py_EQ);
        if (same < 0) return -1;
        if (same) return 0;
        PyObject *also = PyDict_GetItemWithError(data, s_also);
        if (also && also != Py_None) return 0;
        if (PyErr_Occurred()) return -1;
        if (PyDict_SetItem(data, s_also, kind) < 0) return -1;
    }
    if (!data_existed && streq(dst, s_unresolved) && PyList_Append(w->new_unresolved, site) < 0)
        return -1;
    int tk = PySet_Contains(w->target_kinds, kind);
    if (tk < 0) return -1;
    if (tk) {
        if (!streq(dst, s_unresolved)) {
            int has = PySet_Contains(w->tset, dst);
            if (has < 0) return -1;
            if (!has && (PySet_Add(w->tset, dst) < 0 || PyList_Append(w->tnew, dst) < 0)) return -1;
        }
    }
    return 0;
}

/* link(block_of(site), target, kind, site, attrs) */
static int link_from_site(Walk *w, PyObject *site, PyObject *target, PyObject *kind, PyObject *attrs) {
    uint64_t sa = PyLong_AsUnsignedLongLong(site), owner;
    if (sa == (uint64_t)-1 && PyErr_Occurred()) return -1;
    int o = owner_of(w, sa, &owner);
    if (o < 0) return -1;
    if (o) { PyErr_SetObject(PyExc_KeyError, site); return -1; }
    PyObject *src;
    if (w->last_start_obj && w->last_start == owner) {
        src = w->last_start_obj;
        Py_INCREF(src);
    } else {
        src = addr_obj(owner);
        if (!src) return -1;
    }
    int r = link_edge(w, src, target, kind, site, attrs);
    Py_DECREF(src);
    return r;
}

/* CFG.put_block */
static int put_block(Walk *w, PyObject *start, uint64_t end, PyObject *insns, PyObject *sens) {
    PyObject *endo = addr_obj(end);
    if (!endo) return -1;
    /* Both callers put a block where no node is (the marks say so); the
     * lookup is only paid when one is. */
    uint64_t sa0 = PyLong_AsUnsignedLongLong(start);
    if (sa0 == (uint64_t)-1 && PyErr_Occurred()) { Py_DECREF(endo); return -1; }
    int known = is_node(w, sa0);
    if (known < 0) { Py_DECREF(endo); return -1; }
    PyObject *d = known ? PyDict_GetItemWithError(w->gnode, start) : NULL;
    if (!d && PyErr_Occurred()) { Py_DECREF(endo); return -1; }
    int fresh = d == NULL;
    if (fresh) {
        d = PyDict_Copy(w->node_tmpl);
        if (!d) { Py_DECREF(endo); return -1; }
    } else {
        Py_INCREF(d);
    }
    int r = (PyDict_SetItem(d, s_kind, s_block) < 0 || PyDict_SetItem(d, s_start, start) < 0 ||
             PyDict_SetItem(d, s_end, endo) < 0 || PyDict_SetItem(d, s_insns, insns) < 0 ||
             PyDict_SetItem(d, s_sensitive, sens) < 0) ? -1 : 0;
    Py_DECREF(endo);
    if (r == 0) {
        /* str, int, tuple and the untracked Insns only: nothing for the cyclic
         * GC (a later insertion of a container tracks the dict again). */
        if (PyObject_GC_IsTracked(d)) PyObject_GC_UnTrack(d);
        int err = 0;
        uint64_t sa = PyLong_AsUnsignedLongLong(start);
        uint8_t *m = (sa == (uint64_t)-1 && PyErr_Occurred()) ? NULL
                     : marks_page(w, sa & PAGE_MASK, true, &err);
        if (!m) r = -1;
        else m[sa & 0xFFF] = BLOCK_MARK;
    }
    if (r == 0 && fresh) {
        PyObject *a = PyDict_New(), *b = PyDict_New();
        if (!a || !b || PyDict_SetItem(w->gsucc, start, a) < 0 ||
            PyDict_SetItem(w->gpred, start, b) < 0 || PyDict_SetItem(w->gnode, start, d) < 0)
            r = -1;
        Py_XDECREF(a);
        Py_XDECREF(b);
    }
    Py_DECREF(d);
    return r;
}

static int call_add_bad(Walk *w, uint64_t a, PyObject *reason) {
    PyObject *r = PyObject_CallFunction(w->add_bad, "KO", (unsigned long long)a, reason);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Parse capstone's immediate operand as Python's int(op, 0) would for the
 * spellings capstone prints ("0x1f", "9").  0 when it is anything else. */
static int parse_imm(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (s[0] == '0' && s[1] == 'x') {
        s += 2;
        if (!*s) return 0;
        for (; *s; s++) {
            int c = *s, d;
            if (c >= '0' && c <= '9') d = c - '0';
            else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
            else return 0;
            if (v >> 60) return 0;
            v = v * 16 + (uint64_t)d;
        }
    } else {
        if (!*s || (s[0] == '0' && s[1])) return 0;
        for (; *s; s++) {
            if (*s < '0' || *s > '9') return 0;
            if (v > 100000000000000000ull) return 0;
            v = v * 10 + (uint64_t)(*s - '0');
        }
    }
    *out = v;
    return 1;
}

static PyObject *work_item(PyObject *site, uint64_t target, PyObject *kind) {
    return Py_BuildValue("(OKOO)", site, (unsigned long long)(target & 0xFFFFFFFFull), kind, Py_None);
}

/* Scanner._branch for the common cases; the rest goes to the Python method.
 * Returns a new list of work items. */
static PyObject *branch(Walk *w, PyObject *f, uint64_t a, PyObject *site, unsigned size,
                        const char *ops) {
    uint64_t nxt = (a + size) & 0xFFFFFFFFull, t;
    if (streq(f, s_stop)) return PyList_New(0);
    int jcc = streq(f, s_jcc), jmp = streq(f, s_jmp), call = streq(f, s_call);
    if ((jcc || jmp || call) && parse_imm(ops, &t)) {
        PyObject *x = work_item(site, t, jcc ? s_cond_jump : jmp ? s_jump : s_call);
        if (!x) return NULL;
        if (jmp) {
            PyObject *l = PyList_New(1);
            if (!l) { Py_DECREF(x); return NULL; }
            PyList_SET_ITEM(l, 0, x);
            return l;
        }
        PyObject *y = work_item(site, nxt, jcc ? s_fallthrough : s_return);
        PyObject *l = y ? PyList_New(2) : NULL;
        if (!l) { Py_DECREF(x); Py_XDECREF(y); return NULL; }
        PyList_SET_ITEM(l, 0, x);
        PyList_SET_ITEM(l, 1, y);
        return l;
    }
    PyObject *op = PyUnicode_DecodeASCII(ops, (Py_ssize_t)strlen(ops), NULL);
    if (!op) return NULL;
    PyObject *r = PyObject_CallFunction(w->branch, "OKIO", f, (unsigned long long)a, size, op);
    Py_DECREF(op);
    return r;
}

/* Scanner._check: 0 = joins (horizon/flags updated), 1 = "fall", 2 = bad (*bad set), -1 error */
static int check(Walk *w, uint64_t a, unsigned size, uint64_t start, long long n,
                 uint64_t *horizon, uint8_t **hflags, PyObject **bad) {
    int err = 0;
    if (a != start) {
        int in = is_node(w, a);
        if (in < 0) return -1;
        if (in) { *horizon = a; return 1; }
        int st = page_state(w, a, &err);
        if (err) return -1;
        if (st) { *horizon = a; return 1; }
    }
    if (n >= w->cap) { *horizon = a; return 1; }
    if (a + size > ADDR_LIMIT) { *bad = s_truncated_4g; *horizon = a; return 2; }
    uint64_t base = a & PAGE_MASK, off = a & 0xFFF;
    uint8_t *flags = page_flags(w, base, true, &err);
    if (err) return -1;
    if (off + size <= PAGE) {
        for (unsigned i = 0; i < size; i++)
            if (flags[off + i]) { *bad = s_overlap_bytes; *horizon = a; return 2; }
        flags[off] = START;
        if (size > 1) memset(flags + off + 1, CONT, size - 1);
    } else {
        PyObject *r = PyObject_CallFunction(w->is_free, "KI", (unsigned long long)a, size);
        if (!r) return -1;
        int free_ = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (free_ < 0) return -1;
        if (!free_) { *bad = s_overlap_bytes; *horizon = a; return 2; }
        r = PyObject_CallFunction(w->mark, "KI", (unsigned long long)a, size);
        if (!r) return -1;
        Py_DECREF(r);
        PyObject *k = addr_obj((a + size - 1) & PAGE_MASK);
        if (!k || PySet_Add(w->touched, k) < 0) { Py_XDECREF(k); return -1; }
        Py_DECREF(k);
    }
    uint64_t nxt = a + size, nbase = nxt & PAGE_MASK, noff = nxt & 0xFFF;
    uint8_t *nf = page_flags(w, nbase, false, &err);
    if (err) return -1;
    if (!nf) { *horizon = nxt; *hflags = NULL; return 0; }
    const uint8_t *s = memchr(nf + noff, START, PAGE - noff);
    long i = s ? (long)(s - nf) : -1;
    const uint8_t *c = memchr(nf + noff, CONT, (size_t)((i >= 0 ? i : (long)PAGE) - (long)noff));
    if (c) i = (long)(c - nf);
    /* A bad node has no bytes in the page map but ends a block like scanned
     * code does (the `a in gnode` test of the Python walk's fast path): the
     * horizon stops at the next one too. */
    uint8_t *nm = marks_page(w, nbase, false, &err);
    if (err) return -1;
    if (nm) {
        const uint8_t *b = memchr(nm + noff, BAD_MARK, (size_t)((i >= 0 ? i : (long)PAGE) - (long)noff));
        if (b) i = (long)(b - nm);
    }
    *horizon = nbase + (uint64_t)(i >= 0 ? i : (long)PAGE);
    *hflags = nf;
    return 0;
}

/* Could catalog.classify_bytes find a row for these bytes?  Its own early
 * exits (prefixes skipped, then an empty opcode slot), so only candidates
 * pay for the Python call. */
static int maybe_sensitive(Walk *w, const uint8_t *b, unsigned n) {
    unsigned i = 0;
    while (i < n && i < 14 && w->prefix[b[i]]) i++;
    if (i >= n) return 0;
    if (b[i] != 0x0F) return w->maybe_op[b[i]];
    return i + 1 < n && w->maybe_op[256 + b[i + 1]];
}

static PyObject *mnemonic(Walk *w, const cs_insn_t *ins) {
    size_t len = strlen(ins->mnemonic);
    PyObject **slot = ins->id < sizeof w->mnem_by_id / sizeof w->mnem_by_id[0]
                      ? &w->mnem_by_id[ins->id] : NULL;
    if (slot && *slot && (size_t)PyUnicode_GET_LENGTH(*slot) == len &&
        memcmp(PyUnicode_DATA(*slot), ins->mnemonic, len) == 0) {
        Py_INCREF(*slot);
        return *slot;
    }
    PyObject *m = PyUnicode_DecodeASCII(ins->mnemonic, (Py_ssize_t)len, NULL);
    if (m && slot) {
        Py_XSETREF(*slot, m);
        Py_INCREF(m);
    }
    return m;
}

/* Insns(start, data, sizes) with its slots set directly: the class's
 * __init__ would cost a Python frame per block. */
static PyObject *new_insns(Walk *w, PyObject *start, PyObject *data, PyObject *sizes) {
    PyTypeObject *tp = (PyTypeObject *)w->insns_type;
    PyObject *o = tp->tp_alloc(tp, 0);
    if (!o) return NULL;
    if (PyObject_SetAttr(o, s_start, start) < 0 || PyObject_SetAttr(o, s_data, data) < 0 ||
        PyObject_SetAttr(o, s_sizes, sizes) < 0 || PyObject_SetAttr(o, s_rows, Py_None) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    return o;
}

/* Push a work item (the reference is stolen). */
static int push_item(Walk *w, PyObject *item) {
    if (w->nstk == w->capstk) {
        size_t cap = w->capstk ? w->capstk * 2 : 1024;
        PyObject **p = PyMem_Realloc(w->stk, cap * sizeof *p);
        if (!p) { Py_DECREF(item); PyErr_NoMemory(); return -1; }
        w->stk = p;
        w->capstk = cap;
    }
    w->stk[w->nstk++] = item;
    return 0;
}

static int push_all(Walk *w, PyObject *items) {
    PyObject *seq = PySequence_Fast(items, "work items must come in a sequence");
    if (!seq) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(it);
        if (push_item(w, it) < 0) { Py_DECREF(seq); return -1; }
    }
    Py_DECREF(seq);
    return 0;
}

/* Room for one more instruction in the block buffers. */
static int reserve(Walk *w, long long n, size_t used) {
    if (used + MAX_INSN + 1 > w->bcap) {
        size_t cap = w->bcap ? w->bcap * 2 : 4096;
        uint8_t *p = PyMem_Realloc(w->bbuf, cap);
        if (!p) { PyErr_NoMemory(); return -1; }
        w->bbuf = p;
        w->bcap = cap;
    }
    if ((size_t)n + 1 > w->scap) {
        size_t cap = w->scap ? w->scap * 2 : 1024;
        uint8_t *p = PyMem_Realloc(w->sbuf, cap);
        if (!p) { PyErr_NoMemory(); return -1; }
        w->sbuf = p;
        w->scap = cap;
    }
    return 0;
}

/* Scanner._decode_block.  No Python object per instruction: the block keeps
 * its bytes and sizes (an Insns, scanner/insns.py); only branches (their
 * address, for work items) and sensitive candidates (their bytes, for the
 * catalog) become objects. */
static int decode_block(Walk *w, uint64_t start, PyObject *starto) {
    Py_INCREF(starto);
    PyObject *sens = PyList_New(0), *follow = NULL, *bad = NULL;
    PyObject *lastsite = NULL;
    int rc = -1, fall = 0;
    long long n = 0;
    size_t used = 0;
    uint64_t a = start, horizon = start, last = 0;
    unsigned lastsize = 0;
    uint8_t *flags = NULL;
    int zeros = 0;
    if (!starto || !sens) goto done;
    for (;;) {
        int d = decode_at(w, a);
        if (d < 0) goto done;
        if (d == 0) {
            bad = PyObject_CallFunction(w->why_not, "K", (unsigned long long)a);
            if (!bad) goto done;
            break;
        }
        cs_insn_t *ins = w->insn;
        unsigned size = ins->size;
        if (a + size > horizon || n >= w->cap) {
            PyObject *why = NULL;
            int v = check(w, a, size, start, n, &horizon, &flags, &why);
            if (v < 0) goto done;
            if (v == 1) { fall = 1; break; }
            if (v == 2) { bad = why; Py_INCREF(bad); break; }
        } else {
            uint64_t off = a & 0xFFF;
            flags[off] = START;
            if (size > 1) memset(flags + off + 1, CONT, size - 1);
        }
        if (size == 2 && ins->bytes[0] == 0 && ins->bytes[1] == 0) {
            if (++zeros > ZERO_RUN_LIMIT) {
                /* The instruction joins no block: its bytes stay unscanned. */
                for (unsigned i = 0; i < size; i++) {
                    uint64_t b = a + i;
                    int err = 0;
                    uint8_t *f = page_flags(w, b & PAGE_MASK, false, &err);
                    if (err) goto done;
                    if (f) f[b & 0xFFF] = 0;
                }
                bad = s_zero_fill;
                Py_INCREF(bad);
                break;
            }
        } else {
            zeros = 0;
        }
        if (reserve(w, n, used) < 0) goto done;
        memcpy(w->bbuf + used, ins->bytes, size);
        used += size;
        w->sbuf[n] = (uint8_t)size;
        n++;
        last = a;
        lastsize = size;
        PyObject *ao = NULL;
        if (maybe_sensitive(w, ins->bytes, size)) {
            PyObject *data = PyBytes_FromStringAndSize((const char *)ins->bytes, size);
            if (!data) goto done;
            PyObject *e = PyObject_CallOneArg(w->classify, data);
            Py_DECREF(data);
            if (!e) goto done;
            if (e != Py_None) {
                ao = addr_obj(a);
                PyObject *s = ao ? Py_BuildValue("(OOO)", ao, PyTuple_GET_ITEM(e, 0), PyTuple_GET_ITEM(e, 1)) : NULL;
                if (s) PyObject_GC_UnTrack(s);
                if (!s || PyList_Append(sens, s) < 0) {
                    Py_XDECREF(s); Py_DECREF(e); Py_XDECREF(ao);
                    goto done;
                }
                Py_DECREF(s);
            }
            Py_DECREF(e);
        }
        PyObject *mn = mnemonic(w, ins);
        if (!mn) { Py_XDECREF(ao); goto done; }
        PyObject *f = PyDict_GetItemWithError(w->flow, mn);   /* borrowed */
        Py_DECREF(mn);
        if (!f && PyErr_Occurred()) { Py_XDECREF(ao); goto done; }
        if (f) {
            if (!ao) ao = addr_obj(a);
            follow = ao ? branch(w, f, a, ao, size, ins->op_str) : NULL;
            lastsite = ao;      /* the block's last instruction: keep it */
            ao = NULL;
            if (!follow) goto done;
            a += size;
            break;
        }
        Py_XDECREF(ao);
        a += size;
    }
    w->insns_scanned += n;
    if (n == 0) {
        rc = call_add_bad(w, start, bad ? bad : s_undecodable);
        goto done;
    }
    {
        PyObject *data = PyBytes_FromStringAndSize((const char *)w->bbuf, (Py_ssize_t)used);
        PyObject *sizes = PyBytes_FromStringAndSize((const char *)w->sbuf, (Py_ssize_t)n);
        PyObject *ti = (data && sizes) ? new_insns(w, starto, data, sizes) : NULL;
        Py_XDECREF(data);
        Py_XDECREF(sizes);
        PyObject *ts = ti ? PyList_AsTuple(sens) : NULL;
        /* Holds only ints and bytes (its rows, once decoded, only tuples of
         * those): the cyclic GC need not walk 380,000 of them after a scan. */
        if (ti && PyObject_GC_IsTracked(ti)) PyObject_GC_UnTrack(ti);
        if (ts) PyObject_GC_UnTrack(ts);
        int r = (ti && ts) ? put_block(w, starto, last + lastsize, ti, ts) : -1;
        Py_XDECREF(ti);
        Py_XDECREF(ts);
        if (r < 0 || (PyList_GET_SIZE(sens) && PyList_SetSlice(w->new_sites, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX, sens) < 0))
            goto done;
        Py_INCREF(starto);
        Py_XSETREF(w->last_start_obj, starto);
        w->last_start = start;
    }
    if (!lastsite) lastsite = addr_obj(last);
    if (!lastsite) goto done;
    if (bad) {
        int in = is_node(w, a);
        if (in < 0) goto done;
        if (!in && call_add_bad(w, a, bad) < 0) goto done;
        PyObject *ao = addr_obj(a);
        if (!ao) goto done;
        int r = link_edge(w, starto, ao, s_fallthrough, lastsite, NULL);
        Py_DECREF(ao);
        if (r < 0) goto done;
    } else if (fall) {
        PyObject *item = work_item(lastsite, a, s_fallthrough);
        if (!item || push_item(w, item) < 0) goto done;
    } else if (follow && push_all(w, follow) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(starto); Py_XDECREF(sens); Py_XDECREF(follow);
    Py_XDECREF(bad); Py_XDECREF(lastsite);
    return rc;
}

/* Slice [lo, hi) of a bytes object or a tuple (new reference). */
static PyObject *slice_of(PyObject *o, Py_ssize_t lo, Py_ssize_t hi) {
    if (PyTuple_Check(o)) return PyTuple_GetSlice(o, lo, hi);
    return PyBytes_FromStringAndSize(PyBytes_AS_STRING(o) + lo, hi - lo);
}

/* Insns(start, data[lo_b:hi_b], sizes[lo_i:hi_i]) with the decoded rows
 * sliced alike when there are any (Insns.split). */
static PyObject *insns_part(Walk *w, PyObject *start, PyObject *data, PyObject *sizes,
                            PyObject *rows, Py_ssize_t lo_b, Py_ssize_t hi_b,
                            Py_ssize_t lo_i, Py_ssize_t hi_i) {
    PyObject *d = slice_of(data, lo_b, hi_b), *z = slice_of(sizes, lo_i, hi_i);
    PyObject *o = (d && z) ? new_insns(w, start, d, z) : NULL;
    Py_XDECREF(d);
    Py_XDECREF(z);
    if (o && rows && PyTuple_Check(rows) && PyTuple_GET_SIZE(rows)) {
        PyObject *r = PyTuple_GetSlice(rows, lo_i, hi_i);
        if (!r || PyObject_SetAttr(o, s_rows, r) < 0) { Py_XDECREF(r); Py_DECREF(o); return NULL; }
        Py_DECREF(r);
    }
    if (o && PyObject_GC_IsTracked(o)) PyObject_GC_UnTrack(o);
    return o;
}

/* CFG.split_block(start, at), step for step, on the DiGraph's dicts (32,000
 * splits on Debian's kernel cost ~15 us each in Python).  Returns 1 when the
 * block is not one this knows how to cut (its insns not an Insns of bytes):
 * the caller then calls the Python method. */
static int split_block(Walk *w, uint64_t start_a, uint64_t at_a, PyObject *at) {
    PyObject *start = addr_obj(start_a), *ins = NULL, *data = NULL, *sizes = NULL, *rows = NULL;
    PyObject *head = NULL, *tail = NULL, *hs = NULL, *ts = NULL, *items = NULL, *site = NULL;
    int rc = -1;
    if (!start) return -1;
    PyObject *d = PyDict_GetItemWithError(w->gnode, start);
    if (!d) { if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, start); goto done; }
    ins = PyDict_GetItemWithError(d, s_insns);
    if (!ins) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "insns"); goto done; }
    Py_INCREF(ins);
    if (Py_TYPE(ins) != (PyTypeObject *)w->insns_type) { rc = 1; goto done; }
    data = PyObject_GetAttr(ins, s_data);
    sizes = data ? PyObject_GetAttr(ins, s_sizes) : NULL;
    rows = sizes ? PyObject_GetAttr(ins, s_rows) : NULL;
    if (!rows) goto done;
    if (!PyBytes_Check(data) || !PyBytes_Check(sizes)) { rc = 1; goto done; }
    /* k: the instruction at `at` */
    const uint8_t *sz = (const uint8_t *)PyBytes_AS_STRING(sizes);
    Py_ssize_t n = PyBytes_GET_SIZE(sizes), k = 0;
    uint64_t off = 0, want = at_a - start_a;
    while (k < n && off < want) off += sz[k++];
    if (k == 0 || k >= n || off != want) { rc = 1; goto done; }   /* Python raises the error */
    head = insns_part(w, start, data, sizes, rows, 0, (Py_ssize_t)off, 0, k);
    tail = head ? insns_part(w, at, data, sizes, rows, (Py_ssize_t)off, PyBytes_GET_SIZE(data), k, n) : NULL;
    if (!tail) goto done;
    /* sensitive sites before / from `at` */
    PyObject *sens = PyDict_GetItemWithError(d, s_sensitive);
    if (!sens) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "sensitive"); goto done; }
    PyObject *seq = PySequence_Fast(sens, "sensitive must be a sequence");
    if (!seq) goto done;
    PyObject *hl = PyList_New(0), *tl = PyList_New(0);
    int bad = !hl || !tl;
    for (Py_ssize_t i = 0; !bad && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *one = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *a0 = PyTuple_Check(one) && PyTuple_GET_SIZE(one) ? PyTuple_GET_ITEM(one, 0) : NULL;
        uint64_t sa = a0 ? PyLong_AsUnsignedLongLong(a0) : (uint64_t)-1;
        if (sa == (uint64_t)-1 && (PyErr_Occurred() || !a0)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "sensitive sites are tuples");
            bad = 1;
        } else if (PyList_Append(sa >= at_a ? tl : hl, one) < 0) {
            bad = 1;
        }
    }
    Py_DECREF(seq);
    hs = bad ? NULL : PyList_AsTuple(hl);
    ts = hs ? PyList_AsTuple(tl) : NULL;
    Py_XDECREF(hl);
    Py_XDECREF(tl);
    if (!ts) goto done;
    PyObject *endo = PyDict_GetItemWithError(d, s_end);
    uint64_t end = endo ? PyLong_AsUnsignedLongLong(endo) : (uint64_t)-1;
    if (end == (uint64_t)-1 && (PyErr_Occurred() || !endo)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "end");
        goto done;
    }
    if (put_block(w, at, end, tail, ts) < 0) goto done;
    /* move the outgoing edges to the tail */
    PyObject *mine = PyDict_GetItemWithError(w->gsucc, start);
    PyObject *new = mine ? PyDict_GetItemWithError(w->gsucc, at) : NULL;
    if (!new) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "succ"); goto done; }
    items = PyDict_Items(mine);
    if (!items) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        PyObject *dst = PyTuple_GET_ITEM(kv, 0), *edge = PyTuple_GET_ITEM(kv, 1);
        PyObject *pd = PyDict_GetItemWithError(w->gpred, dst);
        if (!pd) { if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, dst); goto done; }
        if (PyDict_DelItem(mine, dst) < 0 || PyDict_DelItem(pd, start) < 0) goto done;
        PyObject *old = PyDict_GetItemWithError(new, dst);
        if (!old) {
            if (PyErr_Occurred()) goto done;
            old = PyDict_New();
            if (!old) goto done;
            int r = insert_untracked(new, dst, old) < 0 || insert_untracked(pd, at, old) < 0;
            Py_DECREF(old);    /* both adjacency dicts hold it */
            if (r) goto done;
        }
        if (PyDict_Update(old, edge) < 0) goto done;
    }
    if (PyDict_SetItem(d, s_insns, head) < 0 || PyDict_SetItem(d, s_end, at) < 0 ||
        PyDict_SetItem(d, s_sensitive, hs) < 0)
        goto done;
    if (PyObject_GC_IsTracked(d)) PyObject_GC_UnTrack(d);
    uint64_t last = start_a + off - sz[k - 1];
    site = addr_obj(last);
    if (!site || link_edge(w, start, at, s_fallthrough, site, NULL) < 0) goto done;
    rc = 0;
done:
    Py_XDECREF(start); Py_XDECREF(ins); Py_XDECREF(data); Py_XDECREF(sizes); Py_XDECREF(rows);
    Py_XDECREF(head); Py_XDECREF(tail); Py_XDECREF(hs); Py_XDECREF(ts); Py_XDECREF(items);
    Py_XDECREF(site);
    return rc;
}

/* The worklist loop of Scanner._run_worklist. */
static int run_worklist(Walk *w) {
    for (;;) {
        if (w->nstk == 0) return 0;
        PyObject *item = w->stk[--w->nstk];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_TypeError, "work items are (site, target, kind, attrs)");
            return -1;
        }
        PyObject *site = PyTuple_GET_ITEM(item, 0), *target = PyTuple_GET_ITEM(item, 1),
                 *kind = PyTuple_GET_ITEM(item, 2), *attrs = PyTuple_GET_ITEM(item, 3);
        int rc = 0;
        if (target == Py_None) {
            rc = link_from_site(w, site, s_unresolved, s_unresolved, NULL);
            Py_DECREF(item);
            if (rc < 0) return -1;
            continue;
        }
        uint64_t t = PyLong_AsUnsignedLongLong(target);
        if (t == (uint64_t)-1 && PyErr_Occurred()) { Py_DECREF(item); return -1; }
        int in = is_node(w, t);
        if (in < 0) { Py_DECREF(item); return -1; }
        if (!in) {
            if (w->insns_scanned >= w->max_insns) {
                rc = PyList_Append(w->pending, target);
                if (rc == 0 && site != Py_None)
                    rc = link_from_site(w, site, s_unresolved, s_unresolved, NULL);
                Py_DECREF(item);
                if (rc < 0) return -1;
                continue;
            }
            int err = 0;
            int st = page_state(w, t, &err);
            if (err) { Py_DECREF(item); return -1; }
            if (st == START) {
                uint64_t ow;
                int o = owner_of(w, t, &ow);
                if (o < 0) { Py_DECREF(item); return -1; }
                if (o) { PyErr_SetObject(PyExc_KeyError, target); Py_DECREF(item); return -1; }
                int sp = split_block(w, ow, t, target);
                if (sp < 0) { Py_DECREF(item); return -1; }
                if (sp) {
                    PyObject *owner = addr_obj(ow);
                    PyObject *r = owner ? PyObject_CallFunctionObjArgs(w->split_block, owner, target, NULL) : NULL;
                    Py_XDECREF(owner);
                    if (!r) { Py_DECREF(item); return -1; }
                    Py_DECREF(r);
                }
            } else if (st == CONT) {
                rc = call_add_bad(w, t, s_overlap_inside);
            } else if (w->bound >= 0 && w->insns_scanned >= w->bound && site != Py_None &&
                       !streq(kind, s_fallthrough)) {
                PyObject *r = PyObject_CallOneArg(w->defer, item);
                Py_DECREF(item);
                if (!r) return -1;
                Py_DECREF(r);
                continue;
            } else {
                rc = decode_block(w, t, target);
            }
            if (rc < 0) { Py_DECREF(item); return -1; }
        }
        if (PyDict_GET_SIZE(w->deferred)) {
            /* the target is a node now: the branches deferred to it link */
            PyObject *later = PyDict_GetItemWithError(w->deferred, target);
            if (!later && PyErr_Occurred()) { Py_DECREF(item); return -1; }
            if (later) {
                Py_INCREF(later);
                int r = PyDict_DelItem(w->deferred, target) < 0 || push_all(w, later) < 0;
                Py_DECREF(later);
                if (r) { Py_DECREF(item); return -1; }
            }
        }
        if (site != Py_None && link_from_site(w, site, target, kind, attrs) < 0) {
            Py_DECREF(item);
            return -1;
        }
        Py_DECREF(item);
    }
}

static PyObject *walk_run(PyObject *self, PyObject *args) {
    Walk w;
    memset(&w, 0, sizeof w);
    unsigned long long handle, fn_iter, fn_malloc, fn_free;
    PyObject *maybe, *prefix;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOOOOOOOOOOOOOOOOOLLLLOOOKKKK:run",
                          &w.work, &w.gnode, &w.gsucc, &w.gpred, &w.pages, &w.record,
                          &w.is_free, &w.mark, &w.marks, &w.insns_type, &w.new_sites, &w.tset, &w.tnew, &w.pending,
                          &w.touched, &w.read_mem, &w.classify, &maybe, &prefix, &w.flow,
                          &w.target_kinds, &w.add_bad, &w.split_block, &w.branch, &w.why_not,
                          &w.max_insns, &w.insns_scanned, &w.cap,
                          &w.bound, &w.defer, &w.deferred, &w.new_unresolved,
                          &handle, &fn_iter, &fn_malloc, &fn_free))
        return NULL;
    if (!PyType_Check(w.insns_type)) {
        PyErr_SetString(PyExc_TypeError, "run: insns_type must be a class");
        return NULL;
    }
    if (!PyBytes_Check(maybe) || PyBytes_GET_SIZE(maybe) != 512 ||
        !PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) != 256) {
        PyErr_SetString(PyExc_TypeError, "opcode table must be 512 bytes, prefix table 256");
        return NULL;
    }
    if (!PyDict_Check(w.gnode) || !PyDict_Check(w.gsucc) || !PyDict_Check(w.gpred) ||
        !PyDict_Check(w.pages) || !PyDict_Check(w.marks) || !PyList_Check(w.new_sites) || !PyDict_Check(w.flow) ||
        !PyList_Check(w.tnew) || !PyList_Check(w.pending) || !PyAnySet_Check(w.tset) ||
        !PyAnySet_Check(w.touched) || !PyAnySet_Check(w.target_kinds) ||
        !PyDict_Check(w.deferred) || !PyList_Check(w.new_unresolved) || !PyCallable_Check(w.defer)) {
        PyErr_SetString(PyExc_TypeError, "run: wrong container types");
        return NULL;
    }
    w.maybe_op = (const uint8_t *)PyBytes_AS_STRING(maybe);
    w.prefix = (const uint8_t *)PyBytes_AS_STRING(prefix);
    w.handle = (size_t)handle;
    w.disasm_iter = (cs_disasm_iter_t)(uintptr_t)fn_iter;
    cs_malloc_t cmalloc = (cs_malloc_t)(uintptr_t)fn_malloc;
    cs_free_t cfree = (cs_free_t)(uintptr_t)fn_free;
    w.extend = PyObject_GetAttrString(w.work, "extend");
    w.windows = PyDict_New();
    w.node_tmpl = Py_BuildValue("{OOOOOOOOOO}", s_kind, s_block, s_start, Py_None, s_end, Py_None,
                                s_insns, Py_None, s_sensitive, Py_None);
    w.edge_tmpl = Py_BuildValue("{OOOO}", s_kind, Py_None, s_site, Py_None);
    PyObject *result = NULL;
    if (!w.extend || !w.windows || !w.node_tmpl || !w.edge_tmpl) goto out;
    {
        PyObject *items = PySequence_List(w.work);
        PyObject *r = items ? PyObject_CallMethod(w.work, "clear", NULL) : NULL;
        int bad = !r || push_all(&w, items) < 0;
        Py_XDECREF(r);
        Py_XDECREF(items);
        if (bad) goto out;
    }
    w.insn = cmalloc(w.handle);
    if (!w.insn) { PyErr_NoMemory(); goto out; }
    int rc = run_worklist(&w);
    cfree(w.insn, 1);
    PyMem_Free(w.bbuf);
    PyMem_Free(w.sbuf);
    if (rc == 0) result = Py_BuildValue("(LLL)", w.insns_scanned, w.decoded, w.reads);
out:
    if (w.nstk) {
        /* Stopped early (an error): what is left goes back to the deque. */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *left = PyList_New(0);
        for (size_t i = 0; left && i < w.nstk; i++)
            if (PyList_Append(left, w.stk[i]) < 0) Py_CLEAR(left);
        PyObject *r = left && w.extend ? PyObject_CallOneArg(w.extend, left) : NULL;
        Py_XDECREF(r);
        Py_XDECREF(left);
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    for (size_t i = 0; i < w.nstk; i++) Py_DECREF(w.stk[i]);
    PyMem_Free(w.stk);
    for (size_t i = 0; i < sizeof w.mnem_by_id / sizeof w.mnem_by_id[0]; i++)
        Py_XDECREF(w.mnem_by_id[i]);
    Py_XDECREF(w.extend); Py_XDECREF(w.windows);
    Py_XDECREF(w.node_tmpl); Py_XDECREF(w.edge_tmpl); Py_XDECREF(w.last_start_obj);
    return result;
}

static PyObject *walk_layout(PyObject *self, PyObject *noargs) {
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:n,s:n,s:n,s:n}",
                         "sizeof", (Py_ssize_t)sizeof(cs_insn_t),
                         "id", (Py_ssize_t)offsetof(cs_insn_t, id),
                         "address", (Py_ssize_t)offsetof(cs_insn_t, address),
                         "size", (Py_ssize_t)offsetof(cs_insn_t, size),
                         "bytes", (Py_ssize_t)offsetof(cs_insn_t, bytes),
                         "mnemonic", (Py_ssize_t)offsetof(cs_insn_t, mnemonic),
                         "op_str", (Py_ssize_t)offsetof(cs_insn_t, op_str),
                         "detail", (Py_ssize_t)offsetof(cs_insn_t, detail));
}

static PyMethodDef methods[] = {
    {"run", walk_run, METH_VARARGS, "Run the scanner's worklist to completion (see scanner/native.py)."},
    {"layout", walk_layout, METH_NOARGS, "Offsets of cs_insn fields as compiled here."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_walk", NULL, -1, methods};

#define INTERN(var, text) do { var = PyUnicode_InternFromString(text); if (!var) return NULL; } while (0)

PyMODINIT_FUNC PyInit__walk(void) {
    INTERN(s_kind, "kind"); INTERN(s_site, "site"); INTERN(s_also, "also");
    INTERN(s_start, "start"); INTERN(s_end, "end"); INTERN(s_insns, "insns");
    INTERN(s_sensitive, "sensitive"); INTERN(s_block, "block");
    INTERN(s_fallthrough, "fallthrough"); INTERN(s_cond_jump, "cond-jump");
    INTERN(s_jump, "jump"); INTERN(s_call, "call"); INTERN(s_return, "return");
    INTERN(s_unresolved, "unresolved"); INTERN(s_flags, "flags");
    INTERN(s_data, "data"); INTERN(s_sizes, "sizes"); INTERN(s_rows, "_rows");
    INTERN(s_overlap_inside, "overlap: inside an instruction already scanned");
    INTERN(s_overlap_bytes, "overlap: bytes of an instruction already scanned");
    INTERN(s_truncated_4g, "truncated: runs past 4 GiB");
    INTERN(s_undecodable, "undecodable");
    INTERN(s_zero_fill, "zero fill: more than 8 consecutive 00 00");
    INTERN(s_jcc, "jcc"); INTERN(s_stop, "stop"); INTERN(s_jmp, "jmp");
    return PyModule_Create(&moddef);
}
