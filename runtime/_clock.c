/* The VM's instruction clock (runtime/clock.py): guest instructions started,
 * counted one translated block at a time by a native UC_HOOK_BLOCK callback.
 *
 * Why: exact virtual time used to come from emu_start(count=N), which makes
 * Unicorn call a counting hook before every instruction (measured: a CPU-bound
 * guest ran at ~0.3 of the bare engine's speed on that alone).  A block hook
 * written in C costs a few nanoseconds per translated block instead.
 *
 * How a block is counted: Unicorn hands the hook the block's address and its
 * size in bytes.  The number of instructions in those bytes comes from
 * capstone (called through the function addresses of the capstone package
 * Python has loaded) and is cached per (address, size) together with the
 * bytes it was decoded from.  Every execution compares the cached bytes with
 * the guest's current ones (a memcmp through host memory: guest RAM and the
 * hypervisor area are host buffers; with paging on, the guest's page tables,
 * two-level or PAE, are walked here: runtime/pagewalk.h), so code that changed under the same address
 * (self-modifying code, another process's code after a CR3 switch) is
 * decoded again, never counted from stale bytes.
 *
 * Exact slice ends: a block that would take the count past the slice's budget
 * is not entered: the hook stops the engine before it (Unicorn emits the
 * block hook before the block's exit check, so the block does not run).  The
 * runner then runs that block once more with a Unicorn exit at the budget's
 * instruction (runtime/clock.py); the shortened block is counted like any.
 *
 * Blocks cut short (a fault, an aborted store) are corrected by the VMM with
 * `cut`, which knows the block's instruction boundaries.
 *
 * Stub-cache blocks (bt) count guest instructions, not stub instructions: the
 * patcher publishes, per stub byte, how many guest instructions' stub ranges
 * start there (patcher/stubcache.py `starts`, from each patch's stub_map), and
 * an instruction of a stub block weighs that many.  A guest instruction is
 * retired when its stub range is entered, so a relocated copy weighs 1, a
 * template weighs 1 on its first instruction and 0 on the rest, the jump back
 * to the guest 0.  Every position (`started`, `cut`, `boundary`) is the sum of
 * the weights before it, so rdtsc, faults, exits and slice ends inside a stub
 * see exactly the count emulate has at the same guest instruction.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pagewalk.h"
#include "faststores.h"

typedef int (*uc_emu_stop_t)(void *);
typedef int (*uc_vmem_read_t)(void *, uint64_t, int, void *, size_t);
typedef bool (*cs_disasm_iter_t)(size_t, const uint8_t **, size_t *, uint64_t *, void *);
typedef void *(*cs_malloc_t)(size_t);
typedef void (*cs_free_t)(void *, size_t);
typedef int (*uc_reg_write_t)(void *, int, const void *);

#define NO_ADDR UINT64_MAX
#define MAX_REGIONS 8
#define UC_PROT_EXEC 4
#define STOP_NONE 0
#define STOP_BEFORE 1   /* stopped before a block that would pass the budget */
#define STOP_AT 2       /* stopped at the budget's instruction inside a block (an exit) */
#define STOP_FIX 3      /* stopped before a block that needs a Unicorn workaround first */
#define STOP_SCAN 4     /* stopped before a guest-kernel block CSAM has not scanned */
#define STOP_IRQ 5      /* stopped before the first block after IF rose (an interrupt waits) */
#define EFLAGS_IF 0x200u
#define EFLAGS_RF 0x10000u
#define HF_CS32 0x10u       /* QEMU's hflags bit: the code segment is 32-bit (clear: 16-bit code, real mode) */
#define HF_INHIBIT_IRQ 0x8u /* QEMU's hflags bit: the sti / mov ss shadow (tests/runtime/test_unicorn_block_facts.py) */
#define PAGE_SHIFT 12
#define PAGE_OFF 0xFFFu
/* Stores logged between two drains (16 bytes each).  CSAM drops only the code
 * the logged stores hit (runtime/smc.py); past the bound only the pages are
 * known and each goes whole.  Linux's ftrace NOPs ~37,000 call sites in one
 * loop with no exit in between: 256 entries overflowed on nearly every drain
 * (docs/benchmarks.md, "CSAM: dropping only what a store changed"). */
#define MAX_WRITES 65536
#define DEFAULT_CACHE_LIMIT ((size_t)64 << 20) /* bytes of decoded blocks (flush_cache) */
#define INTERIOR_BYTE 1 /* interior table: a non-first byte a jump patch covers */
#define PATCH_SITE 2    /* interior table: a jump patch's site (its jmp weighs 0) */
#define MAX_SWAP 64     /* patched bytes one load can cover (a load is at most 16 bytes) */

#define FRONT 512       /* direct-mapped slots in front of the hash table (fits in L1) */
#define HEAD 24         /* a block this short keeps its bytes in the entry (one cache miss less) */

/* A block's last page walk (see "Walks remembered per block"). */
#define MEMO_READS 3            /* page-table entries one walk reads: PDPTE, PDE, PTE */
typedef struct {
    uint8_t n;                      /* entries read; 0: nothing remembered */
    uint8_t len[MEMO_READS];        /* 4 or 8 bytes */
    uint32_t epoch;                 /* Clock.walk_epoch when walked */
    uint64_t cr3, cr4, efer;        /* the registers the walk read */
    uint64_t pa;                    /* its result */
    const uint8_t *at[MEMO_READS];  /* host address of each entry the walk read ... */
    uint64_t val[MEMO_READS];       /* ... and the value it read there */
} WalkMemo;

/* The fields every execution of a known-unchanged block reads come first and
 * fit one cache line: entries are allocated 64-byte aligned (new_entry).  The
 * xz decompressor streams through megabytes of data between two runs of its
 * hot blocks, so each line the hook touches is a likely cache miss
 * (docs/benchmarks.md, "The decompressor's block hook"). */
typedef struct Entry {
    uint64_t addr;
    uint64_t gen, pa;   /* last compared with the guest's bytes at this generation and physical address */
    uint32_t size, ninsn;
    uint32_t nfix;      /* cmpxchg8b sites in the block not known to be hooked */
    uint32_t fs_epoch;  /* FastStores.epoch when its one page was made a code page; 0: not */
    bool in_quick;      /* a quick slot may copy it (quick_fill): compared() voids it */
    uint8_t *bytes;     /* the bytes the count was decoded from: `head` or a buffer */
    struct Entry *next;
    WalkMemo memo;      /* next to the fields every execution reads (cache lines) */
    uint8_t head[HEAD];
    uint16_t *offs;     /* start offset of each instruction */
    uint64_t *fix;
} Entry;

/* A slot of the quick table: a copy of what the block hook's quick path needs
 * from an entry (see "The quick path"), so that path reads one line of this
 * table and not the entry.  Two slots a cache line; `quick` is 0 whenever the
 * copy may be out of date. */
typedef struct {
    uint32_t addr, pa;          /* the block's address and the physical one it was compared at */
    uint64_t gen;               /* the generation it was compared at */
    uint16_t size, ninsn;
    uint8_t quick;              /* 1: the copy holds and the quick path may use it */
    Entry *e;
} Quick;

typedef struct {
    uint64_t base, size;
    uint8_t *host;
} Region;

typedef struct {
    PyObject_HEAD
    /* slice state (hooks write it) */
    uint64_t count, budget, cur_base, stop_block;
    Entry *cur, *stop_entry;
    int reason;
    /* -- what the block hook reads on every block, together (cache lines:
     * see Entry); the comments of the groups they came from still apply -- */
    uint8_t *env;                       /* live CPU state; NULL = unknown */
    Py_ssize_t cr0_off, cr3_off, cr4_off, efer_off;   /* efer_off -1: unknown */
    bool check;                         /* CSAM's block check (bt) */
    uint64_t allow_once;                /* a start the VMM let through once */
    int32_t *recur_mem;                 /* the engine's size_recur_mem (runtime/quirks.py); NULL = unknown */
    bool irq_wait;                      /* an interrupt waits for the window (emulate) */
    bool shadow_carry;      /* the last block weighed nothing and ran in an sti shadow */
    Py_ssize_t eflags_off, if_hflags_off;   /* -1 = not configured */
    uint64_t pa_first, pa_last;         /* the pages block_bytes last read (NO_ADDR: unknown) */
    uint64_t walked;                    /* the block whose first byte pa_first translates, while
                                           block_hook checks it (NO_ADDR otherwise): block_frame */
    uint64_t frames_reused;             /* code checks answered from that translation */
    FastStores fs;                      /* see runtime/faststores.h */
    const uint64_t *tb_invalidated;     /* Unicorn's translation generation (runtime/tbgen.py); NULL = unknown */
    const uint32_t *tb_flushed;
    uint64_t unchanged;                 /* blocks known unchanged: no read, no comparison */
    uint64_t quick_hits;                /* ... of them answered by the quick path (no entry read) */
    uint64_t stub_lo, stub_size;        /* the stub cache (see "guest-instruction starts" below) */
    uint8_t *stub_starts;
    /* statistics */
    uint64_t blocks, misses, changed, gaps, slow_reads;
    /* where a block's bytes are read from */
    Region regions[MAX_REGIONS];
    int nregions;
    uc_emu_stop_t emu_stop;
    uc_vmem_read_t vmem_read;
    /* capstone */
    size_t cs;
    size_t cs16;                        /* a CS_MODE_16 handle for 16-bit code; 0 = none */
    Py_ssize_t cs16_hflags_off;         /* where HF_CS32 is read; -1 = not configured */
    cs_disasm_iter_t iter;
    cs_free_t cs_free;
    void *insn;
    unsigned int fix_id;                /* capstone id of cmpxchg8b */
    uint64_t *hooked;                   /* cmpxchg8b sites with a sync hook */
    /* CSAM's block check and write monitor (bt mode; see "Code check" below) */
    uint64_t ram_pages;
    uint8_t **code;                     /* page -> scanned-instruction flags (scanner/pages.py) */
    PyObject **code_obj;                /* ... the bytearray owning them (a reference we hold) */
    uint8_t **interior;                 /* page -> 1 where a jump patch covers a non-first byte */
    PyObject **interior_obj;
    uint8_t *dirty;                     /* page -> 1 once the guest wrote scanned bytes there */
    uint32_t *view;                     /* page -> the linear page its flags were scanned at (NO_VIEW: none) */
    uint8_t **hide;                     /* page -> [PAGE mask | PAGE guest bytes] of patched bytes */
    PyObject **hide_obj;
    uint8_t *swap_at[MAX_SWAP];         /* bytes a running load sees unpatched ... */
    uint8_t swap_val[MAX_SWAP];         /* ... and the patch byte to put back after it */
    uint32_t nswap;
    uint64_t hidden_reads;
    /* guest-instruction starts per stub-cache byte (see the top comment) */
    PyObject *stub_starts_obj;          /* the object owning stub_starts (a reference we hold) */
    Py_ssize_t hflags_off;              /* CPL = hflags & 3; -1 = unknown */
    uint64_t (*wlog)[2];                /* MAX_WRITES (address, size) of guest stores into scanned bytes
                                         * (on the heap: inline it put 1 MiB between the hook's fields) */
    uint32_t nwlog;
    bool wlog_lost;
    uint64_t code_checks, code_stops, code_writes, smc_restarts;
    uint64_t hooks_revived;             /* stale recur_mem marks cleared (block_hook) */
    /* the lazy flags at sync-hook sites (see "Lazy flags at a sync-hook site") */
    Py_ssize_t cc_op_off, site_eip_off;     /* -1 = not configured */
    uint64_t flag_repairs;
    /* exact stops after in/out (emulate; see Clock_stop_after_io) */
    bool io_stops;
    unsigned int in_id, out_id;
    /* smsw sites go to the VMM's fix-up too (see Clock_fix_smsw); 0 = off */
    unsigned int smsw_id;
    /* rdmsr, wrmsr and `mov cr4, r32` sites go to the CPU model's check
     * (emulate; see Clock_fix_model_sites); false = off */
    bool model_sites;
    unsigned int rdmsr_id, wrmsr_id;
    /* the running block's start when it started with EFLAGS.RF set (the RF
     * clearing below), else NO_ADDR: RF suppresses an instruction breakpoint
     * on that first instruction (runtime/breakpoints.py) */
    uint64_t rf_at;
    /* The interrupt window (emulate; see "Interrupt window" below; irq_wait is above) */
    uint64_t irq_stops;
    size_t nhooked, hooked_cap;
    /* the virtual TSC (runtime/tsc.py; see "Time-stamp counter" below) */
    uint64_t tsc_base;                  /* virtual time at the slice's start + the TSC offset */
    uint64_t vtime_base;                /* virtual time at the slice's start (vtime_now) */
    Py_ssize_t eip_off;
    uc_reg_write_t reg_write;
    int reg_eax, reg_edx, reg_ecx;
    uint64_t tsc_reads;
    /* cache of decoded blocks */
    Entry *front[FRONT];                /* the last entry seen per slot (see lookup) */
    Quick quick[FRONT];                 /* the quick path's copies (paging off), slot as front's */
    bool quick_off;                     /* set_quick(False): every block takes the slow path (tests, A/B) */
    Entry **buckets;
    size_t nbuckets, nentries;
    size_t cache_bytes, cache_limit;    /* bytes the entries hold, and the bound */
    uint64_t cache_flushes;
    uint8_t *tmp;
    size_t tmp_len;
    uint16_t *otmp;
    size_t otmp_len;
    /* the page walk block_bytes last made for a one-page block (see "Walks
     * remembered per block"); trace.n == 0: none to remember */
    WalkMemo trace;
    bool tracing;
    uint32_t walk_epoch;                /* moves when the memory regions or the CPU state move */
    uint64_t walks_remembered;          /* paging on: blocks known unchanged without a walk */
    uint64_t front_misses;              /* lookups the direct-mapped front table did not answer */
} Clock;

/* -- block bytes --------------------------------------------------------------- */
static const uint8_t *host_range(Clock *c, uint64_t pa, uint64_t n)
{
    for (int i = 0; i < c->nregions; i++) {
        Region *r = &c->regions[i];
        if (pa >= r->base && pa - r->base <= r->size && n <= r->size - (pa - r->base))
            return r->host + (pa - r->base);
    }
    return NULL;
}

static inline uint64_t env_u64(Clock *c, Py_ssize_t off)
{
    uint64_t v;
    memcpy(&v, c->env + off, 8);
    return v;
}

/* Page-table entries (and a block's bytes) from any host region: the
 * hypervisor area's own page table maps the stubs (runtime/paging.py). */
static const uint8_t *any_range(void *ctx, uint64_t pa, uint64_t n)
{
    return host_range((Clock *)ctx, pa, n);
}

/* Linear -> physical through the guest's page tables, two-level or PAE: the
 * VMM's one walk (runtime/pagewalk.h), as a supervisor read (a block Unicorn
 * runs passed its own permission checks).  false: not translatable here (not
 * present, reserved bits, tables outside host memory); the caller asks
 * Unicorn.  EFER unknown: NX counts as allowed (the CPU would not run a block
 * whose entry has a reserved bit, so leniency costs nothing). */
static bool walk(Clock *c, uint64_t va, uint64_t *pa)
{
    PwRegs r = {env_u64(c, c->cr0_off), env_u64(c, c->cr3_off), env_u64(c, c->cr4_off),
                c->efer_off >= 0 ? env_u64(c, c->efer_off) : PW_EFER_NXE};
    uint32_t err;
    return pw_walk(&r, any_range, c, va, 0, pa, &err);
}

/* -- Walks remembered per block -------------------------------------------------
 * With paging on, a block known unchanged (below) still needed its physical
 * address, and so a walk of the guest's page tables, at every execution: the
 * walk and the block read were ~40% of the clock's time on a Linux boot
 * (docs/benchmarks.md, "The clock's per-block callback").  A walk's result is
 * a function of CR3, CR4, EFER and the values of the page-table entries it
 * read (each entry's address comes from CR3 and the entry read before it), and
 * the host address of each entry is fixed while the memory regions are.  So
 * the walk made for a one-page block is remembered in its entry: the host
 * address and value of every page-table entry it read and the registers; when
 * the block runs again and all of them still hold, the walk would read the
 * same entries and give the same address, and is not made.  Any change (a
 * store into a page table, a CR3 switch, new memory regions) walks again. */
static const uint8_t *traced_range(void *ctx, uint64_t pa, uint64_t n)
{
    Clock *c = ctx;
    const uint8_t *p = host_range(c, pa, n);
    if (c->tracing) {
        WalkMemo *t = &c->trace;
        if (!p || n > 8 || t->n >= MEMO_READS) {
            c->tracing = false;
            t->n = 0;
        } else {
            t->at[t->n] = p;
            t->len[t->n] = (uint8_t)n;
            uint32_t w;
            if (n == 4) {
                memcpy(&w, p, 4);
                t->val[t->n] = w;
            } else if (n == 8) {
                memcpy(&t->val[t->n], p, 8);
            } else {
                c->tracing = false;         /* pw_walk reads 4 or 8 bytes: never here */
                t->n = 0;
                return p;
            }
            t->n++;
        }
    }
    return p;
}

static inline bool memo_holds(const Clock *c, const WalkMemo *m)
{
    if (!m->n || m->epoch != c->walk_epoch)
        return false;
    uint64_t cr3, cr4, efer = 0;
    memcpy(&cr3, c->env + c->cr3_off, 8);
    memcpy(&cr4, c->env + c->cr4_off, 8);
    if (c->efer_off >= 0)
        memcpy(&efer, c->env + c->efer_off, 8);
    if (cr3 != m->cr3 || cr4 != m->cr4 || efer != m->efer)
        return false;
    for (unsigned i = 0; i < m->n; i++) {
        uint64_t v;             /* fixed-size loads: a variable-length memcpy cost ~15 ns here */
        if (m->len[i] == 4) {
            uint32_t w;
            memcpy(&w, m->at[i], 4);
            v = w;
        } else {
            memcpy(&v, m->at[i], 8);
        }
        if (v != m->val[i])
            return false;
    }
    return true;
}

/* walk() for a one-page block, remembering what it read in c->trace. */
static bool walk_traced(Clock *c, uint64_t va, uint64_t *pa)
{
    PwRegs r = {env_u64(c, c->cr0_off), env_u64(c, c->cr3_off), env_u64(c, c->cr4_off),
                c->efer_off >= 0 ? env_u64(c, c->efer_off) : PW_EFER_NXE};
    uint32_t err;
    c->trace.n = 0;
    c->tracing = true;
    bool ok = pw_walk(&r, traced_range, c, va, 0, pa, &err);
    c->tracing = false;
    if (!ok) {
        c->trace.n = 0;
        return false;
    }
    c->trace.cr3 = r.cr3;
    c->trace.cr4 = r.cr4;
    c->trace.efer = c->efer_off >= 0 ? r.efer : 0;
    c->trace.epoch = c->walk_epoch;
    c->trace.pa = *pa;
    return true;
}

static uint8_t *scratch(Clock *c, size_t n)
{
    if (n > c->tmp_len) {
        uint8_t *t = realloc(c->tmp, n);
        if (!t)
            return NULL;
        c->tmp = t;
        c->tmp_len = n;
    }
    return c->tmp;
}

/* The block's current bytes, or NULL when they cannot be read. */
static const uint8_t *block_bytes(Clock *c, void *uc, uint64_t addr, uint32_t size)
{
    c->pa_first = c->pa_last = NO_ADDR;
    c->trace.n = 0;
    if (c->env) {
        if (!(env_u64(c, c->cr0_off) & 0x80000000u)) {
            c->pa_first = addr;
            c->pa_last = addr + (size ? size - 1 : 0);
            return host_range(c, addr, size);
        }
        uint64_t pa;
        if ((addr & 0xFFF) + size <= 0x1000) {
            if (walk_traced(c, addr, &pa)) {
                c->pa_first = c->pa_last = pa;
                const uint8_t *p = host_range(c, pa, size);
                if (p)
                    return p;       /* the trace stands for a walk and a read that worked */
                c->trace.n = 0;
            }
        } else {
            uint8_t *t = scratch(c, size);
            uint32_t first = 0x1000 - (uint32_t)(addr & 0xFFF);
            uint64_t pb;
            const uint8_t *p1, *p2;
            if (t && walk(c, addr, &pa) && walk(c, addr + first, &pb)) {
                c->pa_first = pa;
                c->pa_last = pb;
                if ((p1 = host_range(c, pa, first)) && (p2 = host_range(c, pb, size - first))) {
                    memcpy(t, p1, first);
                    memcpy(t + first, p2, size - first);
                    return t;
                }
            }
        }
    }
    uint8_t *t = scratch(c, size);
    if (!t)
        return NULL;
    c->slow_reads++;
    if (c->vmem_read(uc, addr, UC_PROT_EXEC, t, size) != 0)
        return NULL;
    return t;
}

/* -- decoding ------------------------------------------------------------------- */
#define MAX_FIX 32      /* sites of one block that need a hook (more: the block's first 32) */

/* `mov cr4, r32` (0F 22 /4) after any legacy prefixes: a CPU-model site. */
static bool mov_to_cr4(const uint8_t *b, size_t n)
{
    size_t i = 0;
    while (i < n && i < 14 && (b[i] == 0x66 || b[i] == 0x67 || b[i] == 0xF0 || b[i] == 0xF2 ||
                               b[i] == 0xF3 || b[i] == 0x26 || b[i] == 0x2E || b[i] == 0x36 ||
                               b[i] == 0x3E || b[i] == 0x64 || b[i] == 0x65))
        i++;
    return i + 2 < n && b[i] == 0x0F && b[i + 1] == 0x22 && ((b[i + 2] >> 3) & 7) == 4;
}

static bool decode(Clock *c, Entry *e, const uint8_t *code)
{
    if ((size_t)e->size + 1 > c->otmp_len) {
        uint16_t *o = realloc(c->otmp, sizeof(uint16_t) * ((size_t)e->size + 1));
        if (!o)
            return false;
        c->otmp = o;
        c->otmp_len = (size_t)e->size + 1;
    }
    const uint8_t *p = code;
    size_t avail = e->size;
    uint64_t a = e->addr;
    uint32_t n = 0, nfix = 0;
    uint64_t fix[MAX_FIX];
    /* 16-bit code (real mode, a 16-bit code segment: QEMU's HF_CS32 clear in
     * the block's hflags, read as the block starts) is decoded as such: decoded
     * as 32-bit its instruction sizes differ (runtime/realmode.py) */
    size_t handle = c->cs;
    if (c->cs16 && c->env && c->cs16_hflags_off >= 0) {
        uint32_t hf;
        memcpy(&hf, c->env + c->cs16_hflags_off, 4);
        if (!(hf & HF_CS32))
            handle = c->cs16;
    }
    while (avail > 0) {
        uint16_t off = (uint16_t)(e->size - avail);
        c->otmp[n++] = off;
        if (!c->iter(handle, &p, &avail, &a, c->insn)) {
            /* capstone cannot decode the rest (Unicorn could): one instruction */
            c->gaps++;
            break;
        }
        unsigned int id = *(unsigned int *)c->insn;
        if (id == c->fix_id && nfix < MAX_FIX)
            fix[nfix++] = e->addr + off;
        /* in/out (emulate): a hook on the next instruction of the block makes
         * a stop the VMM requests from the I/O hook take effect right after it */
        if (c->io_stops && (id == c->in_id || id == c->out_id) && avail > 0 && nfix < MAX_FIX)
            fix[nfix++] = e->addr + (e->size - avail);
        /* smsw: Unicorn's smsw r32 writes 16 bits; runtime/smswfix.py hooks it */
        if (c->smsw_id && id == c->smsw_id && nfix < MAX_FIX)
            fix[nfix++] = e->addr + off;
        /* rdmsr, wrmsr, mov cr4 (emulate): runtime/cpucheck.py hooks them */
        if (c->model_sites && nfix < MAX_FIX &&
                (id == c->rdmsr_id || id == c->wrmsr_id || mov_to_cr4(code + off, e->size - off)))
            fix[nfix++] = e->addr + off;
    }
    free(e->fix);
    e->fix = NULL;
    e->nfix = 0;
    if (nfix) {
        e->fix = malloc(sizeof(uint64_t) * nfix);
        if (e->fix) {
            memcpy(e->fix, fix, sizeof(uint64_t) * nfix);
            e->nfix = nfix;
        }
    }
    if (n == 0) {               /* an empty block (Unicorn's exit marker) */
        c->otmp[n++] = 0;
    }
    uint16_t *offs = realloc(e->offs, sizeof(uint16_t) * n);
    uint8_t *bytes = e->bytes ? e->bytes : e->size <= HEAD ? e->head : malloc(e->size);
    if (!offs || !bytes) {
        if (offs)
            e->offs = offs;
        return false;
    }
    memcpy(offs, c->otmp, sizeof(uint16_t) * n);
    memcpy(bytes, code, e->size);
    e->offs = offs;
    e->bytes = bytes;
    e->ninsn = n;
    return true;
}

static inline size_t slot(Clock *c, uint64_t addr, uint32_t size)
{
    uint64_t h = (addr ^ ((uint64_t)size << 44)) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & (c->nbuckets - 1);
}

static void grow(Clock *c)
{
    size_t nb = c->nbuckets * 2;
    Entry **b = calloc(nb, sizeof(Entry *));
    if (!b)
        return;
    Entry **old = c->buckets;
    size_t on = c->nbuckets;
    c->buckets = b;
    c->nbuckets = nb;
    for (size_t i = 0; i < on; i++) {
        Entry *e = old[i];
        while (e) {
            Entry *next = e->next;
            size_t s = slot(c, e->addr, e->size);
            e->next = b[s];
            b[s] = e;
            e = next;
        }
    }
    free(old);
}

static size_t entry_bytes(const Entry *e)
{
    return sizeof(Entry) + e->size + sizeof(uint16_t) * ((size_t)e->ninsn + 1)
           + sizeof(uint64_t) * e->nfix;
}

/* The cache is bounded (issue 18: a guest that keeps reaching new code, such as
 * a slide through zeroed RAM, added an entry per block without end).  Past
 * the bound every entry is dropped except the two the clock may still use:
 * the block being counted (cut, smc_restart) and the one a stop refers to.
 * Dropped blocks are decoded again when they run again: the count is the same,
 * only slower. */
static void flush_cache(Clock *c)
{
    Entry *keep[2] = {c->cur, c->stop_entry};
    for (size_t i = 0; i < c->nbuckets; i++) {
        Entry *e = c->buckets[i];
        while (e) {
            Entry *next = e->next;
            if (e != keep[0] && e != keep[1]) {
                free(e->offs);
                if (e->bytes != e->head)
                    free(e->bytes);
                free(e->fix);
                free(e);
            }
            e = next;
        }
        c->buckets[i] = NULL;
    }
    memset(c->front, 0, sizeof c->front);
    memset(c->quick, 0, sizeof c->quick);
    c->nentries = 0;
    c->cache_bytes = 0;
    for (int k = 0; k < 2; k++) {
        Entry *e = keep[k];
        if (!e || (k == 1 && e == keep[0]))
            continue;
        size_t s = slot(c, e->addr, e->size);
        e->next = c->buckets[s];
        c->buckets[s] = e;
        c->nentries++;
        c->cache_bytes += entry_bytes(e);
    }
    c->cache_flushes++;
}

/* memcmp(a, b, n) == 0 for a block's few bytes, without the library call
 * (a kernel block is ~12 bytes; the call was ~5% of a Linux boot's CPU). */
static inline bool same_bytes(const uint8_t *a, const uint8_t *b, uint32_t n)
{
    for (; n >= 8; a += 8, b += 8, n -= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y)
            return false;
    }
    for (; n; n--)
        if (*a++ != *b++)
            return false;
    return true;
}

#define NO_GEN UINT64_MAX

/* -- Blocks known unchanged ------------------------------------------------------
 * Unicorn's translated block holds the bytes it was translated from; a store
 * into them invalidates it (on pages that keep TLB_NOTDIRTY: every code page,
 * runtime/faststores.h) and a flush drops every block, and each moves one of
 * two counters (runtime/tbgen.py).  A block compared with the guest's bytes
 * while neither counter moved since, at the same physical address, therefore
 * still holds those bytes: the running translation is that one, or one made
 * since from the same, unchanged, memory.  Such a block is neither read nor
 * compared (with paging off not even its address is translated).  Host writes
 * into code move no counter, as Unicorn does not see them either: the count
 * is then the running translation's, whose bytes are the ones compared. */
static inline uint64_t generation(const Clock *c)
{
    if (!c->tb_invalidated)
        return NO_GEN;
    return *c->tb_invalidated + ((uint64_t)*c->tb_flushed << 44);
}

static inline bool paging_off(Clock *c)
{
    return c->env && !(env_u64(c, c->cr0_off) & 0x80000000u);
}

static inline size_t front_slot(uint64_t addr)
{
    return (size_t)(addr ^ (addr >> 9)) & (FRONT - 1);
}

/* Remember the generation and address `e` was compared at (one page only). */
static inline void compared(Clock *c, Entry *e, const uint8_t *code, uint64_t gen)
{
    e->gen = code && c->pa_first != NO_ADDR && c->pa_first >> PAGE_SHIFT == c->pa_last >> PAGE_SHIFT
             ? gen : NO_GEN;
    if (e->pa != c->pa_first)
        e->fs_epoch = 0;        /* its code-page mark was for the old page (block_hook) */
    e->pa = c->pa_first;
    if (e->in_quick) {          /* the copy is out of date: block_hook fills it again (quick_fill) */
        Quick *q = &c->quick[front_slot(e->addr)];
        if (q->e == e)
            q->quick = 0;
        e->in_quick = false;
    }
    e->memo = c->trace;
}

/* A zeroed entry on its own cache line (see Entry). */
static Entry *new_entry(void)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(Entry)))
        return NULL;
    memset(p, 0, sizeof(Entry));
    return p;
}

/* The cached entry of (addr, size), or NULL.  A small direct-mapped table of
 * the last entry per slot goes first: a guest's hot loops run the same few
 * blocks, and the hash table's buckets and chains were the hook's main cache
 * misses (~25% of its samples on a Linux boot). */
static Entry *lookup(Clock *c, uint64_t addr, uint32_t size)
{
    Entry **front = &c->front[front_slot(addr)];
    Entry *f = *front;
    if (f && f->addr == addr && f->size == size)
        return f;
    c->front_misses++;
    size_t s = slot(c, addr, size);
    for (Entry **link = &c->buckets[s], *e; (e = *link) != NULL; link = &e->next) {
        if (e->addr == addr && e->size == size) {
            *front = e;
            if (link != &c->buckets[s]) {       /* to the front: the next lookup stops at once */
                *link = e->next;
                e->next = c->buckets[s];
                c->buckets[s] = e;
            }
            return e;
        }
    }
    return NULL;
}

/* Whether `f`, compared at generation `gen`, is known unchanged without
 * reading its bytes (see "Blocks known unchanged"); its pages are then set. */
static inline bool known_unchanged(Clock *c, Entry *f, uint64_t addr, uint32_t size, uint64_t gen)
{
    if (gen == NO_GEN || f->gen != gen)
        return false;
    if (paging_off(c)) {
        if (f->pa != addr)
            return false;
        c->pa_first = addr;
        c->pa_last = addr + (size ? size - 1 : 0);
    } else if (c->env && f->memo.pa == f->pa && memo_holds(c, &f->memo)) {
        /* block_bytes would walk to f->pa and read the block there: its memo
         * says so without the walk (see "Walks remembered per block") */
        c->pa_first = c->pa_last = f->pa;
        c->walks_remembered++;
    } else {
        return false;
    }
    c->unchanged++;
    return true;
}

/* The block's entry, its bytes checked against the guest's current ones. */
static Entry *entry_for(Clock *c, void *uc, uint64_t addr, uint32_t size)
{
    uint64_t gen = generation(c);
    Entry *f = lookup(c, addr, size);
    if (f && known_unchanged(c, f, addr, size, gen))
        return f;
    const uint8_t *code = block_bytes(c, uc, addr, size);
    if (f) {
        if (gen != NO_GEN && f->gen == gen && code && f->pa == c->pa_first
            && c->pa_first >> PAGE_SHIFT == c->pa_last >> PAGE_SHIFT) {
            c->unchanged++;
            f->memo = c->trace;
            return f;
        }
        if (code && !same_bytes(f->bytes, code, size)) {
            c->changed++;
            c->cache_bytes -= entry_bytes(f);
            decode(c, f, code);
            c->cache_bytes += entry_bytes(f);
        }
        compared(c, f, code, gen);
        return f;
    }
    if (!code)
        return NULL;
    Entry *e = new_entry();
    if (!e)
        return NULL;
    e->addr = addr;
    e->size = size;
    if (!decode(c, e, code)) {
        free(e->offs);
        if (e->bytes != e->head)
            free(e->bytes);
        free(e);
        return NULL;
    }
    c->misses++;
    compared(c, e, code, gen);
    if (c->cache_bytes + entry_bytes(e) > c->cache_limit)
        flush_cache(c);
    size_t s = slot(c, addr, size);
    e->next = c->buckets[s];
    c->buckets[s] = e;
    c->front[front_slot(addr)] = e;
    c->cache_bytes += entry_bytes(e);
    if (++c->nentries > c->nbuckets)       /* chains stay short: each link is a cache miss */
        grow(c);
    return e;
}

/* Where a would go in the sorted list of hooked sites (binary search: the
 * lazy-flags repair asks on every rdtsc and port access). */
static size_t hooked_slot(Clock *c, uint64_t a)
{
    size_t lo = 0, hi = c->nhooked;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->hooked[mid] < a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool is_hooked(Clock *c, uint64_t a)
{
    size_t i = hooked_slot(c, a);
    return i < c->nhooked && c->hooked[i] == a;
}

/* True when every cmpxchg8b of e has its sync hook (then remembered). */
static bool fixed(Clock *c, Entry *e)
{
    for (uint32_t i = 0; i < e->nfix; i++)
        if (!is_hooked(c, e->fix[i]))
            return false;
    e->nfix = 0;
    return true;
}

#define NO_VIEW UINT32_MAX
#define CF_OK 0         /* in RAM, and the page's view is this linear page */
#define CF_PASS 1       /* outside RAM (stubs, the hypervisor area): not checked */
#define CF_REFUSE 2     /* another view, or no translation here (not present) */
static int code_frame(Clock *c, uint64_t addr, uint64_t *pa);   /* see "Code check" */
static int block_frame(Clock *c, uint64_t addr, uint64_t *pa);

/* Guest instructions in the first k instructions of e: k outside the stub
 * cache, else the sum of the published stub-byte weights. */
static inline bool ends_in_patch_jump(Clock *c, Entry *e)
{
    if (e->offs[e->ninsn - 1] + 5u != e->size || e->bytes[e->offs[e->ninsn - 1]] != 0xE9)
        return false;
    uint64_t pa;
    if (block_frame(c, e->addr + e->offs[e->ninsn - 1], &pa) != CF_OK)
        return false;
    uint64_t pg = pa >> PAGE_SHIFT;
    return c->interior[pg] && c->interior[pg][pa & PAGE_OFF] == PATCH_SITE;
}

static inline uint64_t weight(Clock *c, Entry *e, uint32_t k)
{
    if (!c->stub_starts || e->addr - c->stub_lo >= c->stub_size) {
        /* guest code: the jump into a patch's stub is no guest instruction
         * (the stub counts the ones it translates); a jmp ends its block */
        if (k >= e->ninsn && c->check && ends_in_patch_jump(c, e))
            return e->ninsn - 1;
        return k;
    }
    uint64_t w = 0;
    for (uint32_t i = 0; i < k && i < e->ninsn; i++) {
        uint64_t off = e->addr - c->stub_lo + e->offs[i];
        if (off < c->stub_size)
            w += c->stub_starts[off];
    }
    return w;
}

/* The instruction of e (index >= 1) before which exactly k guest instructions
 * have started and which starts one more (in guest code: instruction k), or -1.
 * k = 0 finds the first guest instruction's stub code in a block that starts
 * inside a template (the rest of the one before): a slice whose budget ended
 * there ends at that guest boundary, where an interrupt can be taken. */
static long find_boundary(Clock *c, Entry *e, uint64_t k)
{
    if (!e)
        return -1;
    for (uint32_t i = 1; i < e->ninsn; i++) {
        uint64_t w = weight(c, e, i);
        if (w > k)
            break;
        if (w == k && weight(c, e, i + 1) > w)
            return (long)i;
    }
    return -1;
}

/* Index of the instruction starting at addr in e, or -1. */
static long index_of(Entry *e, uint64_t addr)
{
    if (!e || addr < e->addr || addr - e->addr >= e->size)
        return -1;
    uint32_t off = (uint32_t)(addr - e->addr);
    long lo = 0, hi = (long)e->ninsn - 1;
    while (lo <= hi) {
        long mid = (lo + hi) / 2;
        if (e->offs[mid] == off)
            return mid;
        if (e->offs[mid] < off)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* -- Code check ---------------------------------------------------------------------
 * Under bt every block the guest kernel (CPL 1, in RAM) starts must begin at an
 * instruction CSAM scanned: the page's flags (scanner/pages.py: 1 = first byte
 * of a scanned instruction), shared with Python as the bytearray itself, must
 * say START there, the page must not be dirty (the guest wrote scanned bytes
 * since), and the address must not lie inside the bytes a jump patch covers.
 * Anything else stops the engine before the block runs (STOP_SCAN) and the
 * VMM scans (runtime/csam.py).  Stubs (outside RAM), ring 3, 16-bit code and
 * real mode pass (refuse_block); 32-bit protected-mode code at real CPL 0 (a
 * native stretch's last blocks) is refused, and the VMM ends the stretch there
 * when it can (runtime/csam.py `_on_unscanned`).
 *
 * The tables are kept per *physical* page (the write and read hooks see
 * physical addresses), and each physical page holds the scan of one linear
 * page at a time, its view (runtime/csam.py, "Paging").  The block's linear
 * address is translated here (the translation block_bytes just made for the
 * block: block_frame; a walk elsewhere) and the start is
 * known only when the physical page's view is that linear page: after a CR3
 * switch that puts other code there, or when the page is entered through
 * another alias, the block is refused and the VMM moves the view. */

static int code_frame(Clock *c, uint64_t addr, uint64_t *pa)
{
    if (c->env && (env_u64(c, c->cr0_off) & 0x80000000u)) {
        if (!walk(c, addr, pa))
            return CF_REFUSE;
    } else {
        *pa = addr;
    }
    uint64_t pg = *pa >> PAGE_SHIFT;
    if (pg >= c->ram_pages)
        return CF_PASS;
    return c->view[pg] == (uint32_t)(addr >> PAGE_SHIFT) ? CF_OK : CF_REFUSE;
}

/* code_frame for an address on the first page of the block block_hook is
 * checking.  entry_for has just translated the block's first byte (a walk, or
 * a remembered walk whose page-table entries still hold: "Walks remembered per
 * block"), and nothing ran since, so an address on the same linear page
 * translates to the same physical page: the check's own walk of the guest's
 * tables (43 M per 150 M instructions of Linux under bt, ~5% of bt's CPU:
 * docs/benchmarks.md, "bt's kernel phase") is not made again. */
static int block_frame(Clock *c, uint64_t addr, uint64_t *pa)
{
    if (c->walked == NO_ADDR || c->pa_first == NO_ADDR || (addr >> PAGE_SHIFT) != (c->walked >> PAGE_SHIFT))
        return code_frame(c, addr, pa);
    c->frames_reused++;
    *pa = (c->pa_first & ~(uint64_t)PAGE_OFF) | (addr & PAGE_OFF);
    uint64_t pg = *pa >> PAGE_SHIFT;
    if (pg >= c->ram_pages)
        return CF_PASS;
    return c->view[pg] == (uint32_t)(addr >> PAGE_SHIFT) ? CF_OK : CF_REFUSE;
}

static inline bool known_start(Clock *c, uint64_t addr)
{
    uint64_t pg = addr >> PAGE_SHIFT;
    const uint8_t *f = c->code[pg];
    if (!f || c->dirty[pg] || f[addr & PAGE_OFF] != 1)
        return false;
    const uint8_t *in = c->interior[pg];
    return !(in && in[addr & PAGE_OFF] == INTERIOR_BYTE);
}

/* Code CSAM's check lets through without looking: ring 3, and code CSAM never
 * scans. */
static inline bool unchecked_code(Clock *c)
{
    if (c->hflags_off < 0 || !c->env)
        return false;
    uint32_t hflags;
    memcpy(&hflags, c->env + c->hflags_off, 4);
    if ((hflags & 3) == 3)
        return true;
    /* 16-bit code (real mode, a 16-bit code segment) is never scanned: CSAM
     * decodes 32-bit code.  At real CPL 0 it is bt's native stretch
     * (runtime/realswitch.py), at CPL 1 a 16-bit segment in protected mode
     * that runs under trap's rules (runtime/bt.py, "16-bit code"). */
    if (!(hflags & HF_CS32))
        return true;
    /* real mode with a 32-bit code segment still cached (the code between
     * the `mov cr0` clearing PE and the guest's far jump) */
    return (hflags & 3) == 0 && !(env_u64(c, c->cr0_off) & 1u);
}

static bool refuse_block(Clock *c, void *uc, uint64_t addr)
{
    if (!c->check || unchecked_code(c))
        return false;
    uint64_t pa;
    int k = block_frame(c, addr, &pa);
    if (k == CF_PASS)
        return false;
    c->code_checks++;
    if (k == CF_OK && known_start(c, pa))
        return false;
    /* Passed, but not used up until the block really starts (block_hook): a
     * block stopped before it runs (the slice's budget ends inside it, so it
     * is re-run with an exit at the budget's instruction) meets this check
     * again, and refusing it then would ask the VMM again and again
     * (a timer's short slices at a start inside a jump patch: docs/fidelity.md). */
    if (addr == c->allow_once)
        return false;
    c->code_stops++;
    c->reason = STOP_SCAN;
    c->stop_block = addr;
    c->stop_entry = NULL;
    c->emu_stop(uc);
    return true;
}

/* UC_HOOK_MEM_WRITE on the physical pages that hold scanned code.  The store is
 * never stopped or replayed here (a stop from a write hook leaves EIP at the
 * writer with its store already done: tests/runtime/test_unicorn_facts.py); it
 * only marks the page dirty and logs the range, so the block check refuses
 * every later block start on the page until the VMM has invalidated it.  A
 * stored byte that held a patch is the guest's from now on: loads stop hiding it. */
static void site_flags(void *clock);    /* "Lazy flags at a sync-hook site" */

/* Marks the scanned bytes a store hits (their page dirty, their hidden patch
 * bytes replaced by the guest's); true when it hit any. */
static bool mark_code_store(Clock *c, uint64_t addr, int size)
{
    bool hit = false;
    for (int i = 0; i < size; i++) {
        uint64_t a = addr + (uint64_t)i, pg = a >> PAGE_SHIFT;
        if (pg >= c->ram_pages || !c->code[pg] || !c->code[pg][a & PAGE_OFF])
            continue;
        c->dirty[pg] = 1;
        if (c->hide[pg])
            c->hide[pg][a & PAGE_OFF] = 0;      /* the guest's store replaces the patch byte */
        hit = true;
    }
    return hit;
}

static void write_hook(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    Clock *c = ud;
    site_flags(c);            /* a cmpxchg8b site's access (Unicorn restored the state first) */
    /* A store that continues the last logged range on its page (a memset, a
     * copy) extends it, whether or not it hits scanned bytes: the log then
     * stays exact where one entry per store would overflow it.  Without that,
     * Linux's poisoning of its freed init code with 0xcc (int3's byte) over
     * hundreds of stores lost the log, and the VMM took the poison over its
     * int3 guards for its own bytes (docs/fidelity.md, "Freed init code"). */
    if (c->nwlog && !c->wlog_lost) {
        uint64_t *last = c->wlog[c->nwlog - 1];
        if (addr == last[0] + last[1] && (addr >> PAGE_SHIFT) == (last[0] >> PAGE_SHIFT)
                && ((addr + (uint64_t)size - 1) >> PAGE_SHIFT) == (addr >> PAGE_SHIFT)) {
            if (mark_code_store(c, addr, size))
                c->code_writes++;
            last[1] += (uint64_t)size;
            return;
        }
    }
    if (!mark_code_store(c, addr, size))
        return;
    c->code_writes++;
    if (c->nwlog && c->wlog[c->nwlog - 1][0] + c->wlog[c->nwlog - 1][1] == addr) {
        c->wlog[c->nwlog - 1][1] += (uint64_t)size;   /* a copy's next store, across a page: one range */
    } else if (c->nwlog < MAX_WRITES) {
        c->wlog[c->nwlog][0] = addr;
        c->wlog[c->nwlog][1] = (uint64_t)size;
        c->nwlog++;
    } else {
        c->wlog_lost = true;
    }
}

/* -- Patches hidden from guest loads ----------------------------------------------
 * Under bt the guest's code pages hold patch bytes (a jump to a stub, int3) the
 * guest never wrote.  A load that covers any of them must see the guest's own
 * bytes, on every page.  Unicorn calls UC_HOOK_MEM_READ hooks before it performs
 * a load and UC_HOOK_MEM_READ_AFTER hooks after it, from the same helper, with
 * nothing run or translated in between (tests/runtime/test_hidden_patches.py):
 * so the first hook puts the guest's bytes into host memory for the one load,
 * the second puts the patch bytes back.  No exit, no stop, no re-execution; the
 * translated blocks (compiled from the patched bytes) are untouched.  A load
 * that covers no patched byte (data sharing a page with code) costs one table
 * lookup per byte.  The two hooks are one pair whose range spans every page that
 * carries patches (runtime/csam.py: Unicorn checks each slow-path load against
 * every read hook's range, so one pair, not one per page), starting 15 bytes
 * early because Unicorn matches a load that crosses into a page by its first
 * byte.  Should two ranges ever overlap (the old pair is deleted when the range
 * grows but lives until the run ends), both fire: the swap is done once (nswap)
 * and undone once. */
static void read_before(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    Clock *c = ud;
    site_flags(c);            /* a cmpxchg8b site's access (Unicorn restored the state first) */
    if (c->nswap)
        return;                 /* a neighbour page's hook already swapped for this load */
    bool hit = false;
    for (int i = 0; i < size; i++) {
        uint64_t a = addr + (uint64_t)i, pg = a >> PAGE_SHIFT;
        if (pg >= c->ram_pages || !c->hide[pg] || !c->hide[pg][a & PAGE_OFF])
            continue;
        uint8_t *h = (uint8_t *)host_range(c, a, 1);
        if (!h || c->nswap >= MAX_SWAP)
            continue;
        c->swap_at[c->nswap] = h;
        c->swap_val[c->nswap] = *h;
        c->nswap++;
        *h = c->hide[pg][PAGE_OFF + 1 + (a & PAGE_OFF)];
        hit = true;
    }
    if (hit)
        c->hidden_reads++;
}

static void unswap(Clock *c)
{
    while (c->nswap) {
        c->nswap--;
        *c->swap_at[c->nswap] = c->swap_val[c->nswap];
    }
}

static void read_after(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    unswap(ud);
}

/* -- the hooks (Unicorn calls them with the Clock as user data) --------------------- */
/* Unicorn's precise self-modifying code (QEMU's): a store into the running
 * translated block abandons it before the store, and runs the writer again
 * as a block of one instruction, then goes on.  The block hook then sees a
 * one-instruction block starting at instruction j of the block it counted
 * whole.  A jump cannot produce that shape (a one-instruction block mid-block
 * would have ended the block there), so the count is set back to the j
 * instructions that ran: without this a rewriting loop is counted twice.
 * Except after a block that started with RF set: QEMU checks no instruction
 * breakpoint in it (runtime/breakpoints.py RFBlockBreakpoints), so a branch
 * back to a breakpoint inside it is followed by a one-instruction block --
 * QEMU's #DB -- at an instruction of the block that did run whole. */
static long smc_restart(Clock *c, uint64_t addr, Entry *e)
{
    Entry *cur = c->cur;
    if (!cur || !e || e->ninsn != 1 || cur->ninsn < 2 || c->rf_at == cur->addr)
        return -1;
    long j = index_of(cur, addr);
    if (j < 0 || (uint64_t)j > cur->ninsn - 2)
        return -1;
    return j;
}

/* -- Interrupt window ------------------------------------------------------------
 * Under emulate the guest's popfd, sti and iretd run natively and set the real
 * IF.  A pending interrupt must be taken where the CPU takes it: at the first
 * instruction boundary where IF is 1 and no sti/mov-ss shadow holds.  Every
 * instruction that may raise IF ends its translated block, and the one after
 * sti runs as a block of its own with HF_INHIBIT_IRQ set in hflags
 * (tests/runtime/test_unicorn_block_facts.py), so that boundary is always a
 * block start: while `irq_wait` is set (the VMM: an interrupt waits and IF was
 * 0), the hook stops the engine before the first block that starts with IF set
 * outside a shadow.  Trap and bt keep the guest's IF in the real EFLAGS too
 * (the kernel runs at CPL 1 with the real IOPL 1), so the same check serves
 * them.  Under bt a block may start inside a stub where no guest instruction
 * starts (the rest of a template, the jump back): no interrupt can be taken
 * there, so the check waits for the next block that starts at a guest
 * instruction's stub code or in guest code (docs/fidelity.md, "IF in the real
 * EFLAGS").
 *
 * A block that weighs no guest instruction (the guest's jmp into a stub) can
 * be the one instruction of an sti shadow: the CPU clears the shadow after it,
 * but the guest's instruction after sti is the stub's first one.  The shadow
 * is carried over to the next block (`shadow_carry`), which the patcher ends
 * right after that instruction's template (patcher/patches.py). */
static inline bool in_shadow(Clock *c)
{
    uint32_t hf;
    memcpy(&hf, c->env + c->if_hflags_off, 4);
    return (hf & HF_INHIBIT_IRQ) != 0;
}

static inline bool window_open(Clock *c, uint64_t addr)
{
    uint32_t fl, hf;
    memcpy(&fl, c->env + c->eflags_off, 4);
    memcpy(&hf, c->env + c->if_hflags_off, 4);
    if (!(fl & EFLAGS_IF) || (hf & HF_INHIBIT_IRQ))
        return false;
    if (c->stub_starts && addr - c->stub_lo < c->stub_size)
        return c->stub_starts[addr - c->stub_lo] != 0;
    return true;
}

/* Fast stores (runtime/faststores.h): the block about to run makes its pages
 * code pages; then a few more TLB entries are swept.  A block whose physical
 * pages are unknown (not readable through the clock's walk) leaves no page
 * known to be free of code: the TLB is flushed and nothing stays unmarked. */
static void fast_stores(Clock *c, void *uc)
{
    FastStores *f = &c->fs;
    if (c->pa_first == NO_ADDR) {
        f->ctl(uc, f->flush_req);
        memset(f->cleaned, 0, f->pages);
        f->flushes++;
    } else {
        fs_code_page(f, uc, c->pa_first >> PAGE_SHIFT);
        if (c->pa_last >> PAGE_SHIFT != c->pa_first >> PAGE_SHIFT)
            fs_code_page(f, uc, c->pa_last >> PAGE_SHIFT);
    }
    fs_sweep(f);
}

/* -- The quick path ----------------------------------------------------------------
 * In every mode with paging off (the bzImage's xz decompressor: ~296 M blocks)
 * most blocks are known unchanged and need nothing but their weight.  Each
 * cache line the hook touches is a likely miss there (the decompressor streams
 * through its buffers between two runs of a block), so a slot of the quick
 * table keeps a copy of the fields that decide it, and a hit reads neither the
 * entry nor the fast-stores page table.  The copy is filled once the slow path
 * accepted the block under paging off (quick_fill) and voided by anything that
 * changes what it copies: a new comparison of the entry (compared), a new
 * fast-stores table (Clock_enable_fast_stores), a cache flush; a slot filled
 * for another entry replaces it.  With paging on the table is never read or
 * written: the kernel's blocks take the slow path as before (its front table
 * of pointers stays 4 KiB; a first version kept the copies in the front table
 * and made the kernel slower: docs/benchmarks.md, "The decompressor's block
 * hook").  A copy holds only
 * for what the rest of the slow path would let through unchanged: no
 * cmpxchg8b/in/out site to fix, the block's one page already a fast-stores
 * code page (or no fast stores), 32-bit addresses.  Under bt (CSAM's code
 * check, a stub cache) also: a block of guest RAM (not a stub: a stub's weight
 * is the stub cache's), not ending in a 5-byte `jmp rel32` (which may be a
 * patch's jump, no guest instruction: weight()), and the code check itself is
 * asked again at every hit (quick_checked): CSAM's tables change while the
 * copy holds. */
static inline void quick_fill(Clock *c, Entry *e)
{
    bool page_marked = !c->fs.fast || (e->fs_epoch == c->fs.epoch && c->fs.epoch);
    if (e->gen == NO_GEN || e->nfix || !page_marked || e->addr >> 32 || e->pa != e->addr
        || e->size > UINT16_MAX || e->ninsn > UINT16_MAX || !e->ninsn)
        return;
    if (c->check || c->stub_starts) {
        uint32_t last = e->offs[e->ninsn - 1];
        if (!c->check || e->pa >> PAGE_SHIFT >= c->ram_pages
            || (last + 5u == e->size && e->bytes[last] == 0xE9))
            return;
    }
    Quick *q = &c->quick[front_slot(e->addr)];
    q->quick = 1;
    q->addr = (uint32_t)e->addr;
    q->pa = (uint32_t)e->pa;
    q->gen = e->gen;
    q->size = (uint16_t)e->size;
    q->ninsn = (uint16_t)e->ninsn;
    q->e = e;
    e->in_quick = true;
}

/* The slot whose copy answers this block start, or NULL (take the slow path). */
static inline Quick *quick_hit(Clock *c, uint64_t addr, uint32_t size)
{
    if (!paging_off(c) || c->quick_off)
        return NULL;
    Quick *q = &c->quick[front_slot(addr)];
    if (!q->quick || q->addr != addr || q->size != size || q->pa != addr)
        return NULL;
    uint64_t gen = generation(c);
    if (gen == NO_GEN || q->gen != gen)
        return NULL;
    return q;
}

/* refuse_block for a quick hit under bt (paging off, a block of guest RAM):
 * true when it would let the block start, with the same count; false leaves
 * the decision, its count and any refusal to the slow path.  The guest's
 * privilege and code size come first as in refuse_block (ring 3, 16-bit code
 * and real mode pass uncounted), then the page's view and scanned start,
 * read afresh: a scan, an invalidation or a guest store into scanned code
 * since the fill changes them (tests/runtime/test_bt_quick_path.py). */
static inline bool quick_checked(Clock *c, uint64_t addr)
{
    if (unchecked_code(c))
        return true;
    uint64_t pg = addr >> PAGE_SHIFT;       /* paging off: linear = physical */
    if (pg >= c->ram_pages || c->view[pg] != (uint32_t)pg || !known_start(c, addr))
        return false;
    c->code_checks++;
    return true;
}

static void block_hook(void *uc, uint64_t addr, uint32_t size, void *ud)
{
    Clock *c = ud;
    /* Unicorn left its "inside a split unaligned access" mark set after a
     * longjmp out of that split (a store rewriting the running block, or a
     * fault on the access's second page), which silences every memory hook
     * (CSAM's code writes, the GDT watch, hidden patch bytes) until the engine
     * re-enters its CPU loop.  No access is in flight at a block's start, so
     * the mark is stale here: clear it (runtime/quirks.py _find_recur_mem). */
    if (c->recur_mem && *c->recur_mem) {
        *c->recur_mem = 0;
        c->hooks_revived++;
    }
    if (c->irq_wait && !c->shadow_carry && window_open(c, addr)) {
        if (c->fs.fast) {           /* the block is translated: its pages hold code */
            block_bytes(c, uc, addr, size);
            fast_stores(c, uc);
        }
        c->irq_wait = false;
        c->irq_stops++;
        c->reason = STOP_IRQ;
        c->stop_block = addr;
        c->stop_entry = NULL;
        c->cur = NULL;
        c->emu_stop(uc);
        return;
    }
    Entry *e;
    uint64_t n;
    Quick *fr = quick_hit(c, addr, size);
    /* a one-instruction block after a longer one may be a restart (smc_restart):
     * the slow path tells */
    if (fr && (fr->ninsn != 1 || !c->cur || c->cur->ninsn < 2) && (!c->check || quick_checked(c, addr))) {
        e = fr->e;
        n = fr->ninsn;
        c->quick_hits++;
        c->pa_first = addr;
        c->pa_last = addr + size - 1;
        c->unchanged++;
        if (c->fs.fast)
            fs_sweep(&c->fs);
        goto counted;
    }
    e = entry_for(c, uc, addr, size);
    if (c->fs.fast) {
        /* A block whose one page this FastStores already made a code page
         * needs only the sweep: pages stay code pages for good, so
         * fs_code_page would find the mark and do nothing -- after a cache
         * miss on the page table (~3% of the decompressor's CPU). */
        bool one_page = c->pa_first != NO_ADDR && c->pa_first >> PAGE_SHIFT == c->pa_last >> PAGE_SHIFT;
        if (e && one_page && e->pa == c->pa_first && e->fs_epoch == c->fs.epoch) {
            fs_sweep(&c->fs);
        } else {
            fast_stores(c, uc);
            if (e && one_page && e->pa == c->pa_first)
                e->fs_epoch = c->fs.epoch;
        }
    }
    /* pa_first translates addr now, until the checks below are done (block_frame) */
    c->walked = e && e->addr == addr ? addr : NO_ADDR;
    n = e ? weight(c, e, e->ninsn) : 1;
    long j = smc_restart(c, addr, e);
    /* the writer of a restart was checked as part of the block it left */
    bool refused = c->check && j < 0 && refuse_block(c, uc, addr);
    c->walked = NO_ADDR;
    if (refused) {
        c->cur = NULL;
        return;
    }
    if (j >= 0) {
        c->count = c->cur_base + weight(c, c->cur, (uint32_t)j);
        c->cur = NULL;
        c->smc_restarts++;
    }
    if (e && e->nfix && !fixed(c, e)) {
        c->reason = STOP_FIX;
        c->stop_block = addr;
        c->stop_entry = e;
        c->cur = NULL;
        c->emu_stop(uc);
        return;
    }
    if (e && paging_off(c))
        quick_fill(c, e);
counted:
    /* A stub instruction standing for several guest instructions (empty
     * templates before it) cannot be split: when no boundary lands exactly on
     * the budget the block runs whole and the slice ends a little late. */
    if (c->count + n > c->budget
        && (!e || c->count >= c->budget || find_boundary(c, e, c->budget - c->count) >= 0)) {
        c->reason = STOP_BEFORE;
        c->stop_block = addr;
        c->stop_entry = e;
        c->cur = NULL;
        c->emu_stop(uc);
        return;
    }
    if (addr == c->allow_once)
        c->allow_once = NO_ADDR;       /* the allowed start runs now (refuse_block) */
    c->blocks++;
    c->cur = e;
    c->cur_base = c->count;
    c->count += n;
    c->shadow_carry = n == 0 && c->eflags_off >= 0 && in_shadow(c);
    /* RF, which an iret loads from its frame, is cleared here, at the start of
     * the block after it: Unicorn clears it only at the end of that block, and
     * its pushf(d) stores it meanwhile, where the CPU clears RF after one
     * instruction and never pushes it (kvm-unit-tests realmode "rflags.rf";
     * tests/runtime/test_realmode_facts.py).  Lost: RF's suppression of an
     * instruction breakpoint on that first instruction. */
    c->rf_at = NO_ADDR;
    if (c->eflags_off >= 0 && c->env) {
        uint32_t fl;
        memcpy(&fl, c->env + c->eflags_off, 4);
        if (fl & EFLAGS_RF) {
            fl &= ~EFLAGS_RF;
            memcpy(c->env + c->eflags_off, &fl, 4);
            c->rf_at = addr;
        }
    }
}

/* -- Lazy flags at a sync-hook site --------------------------------------------
 * A sync site (cmpxchg8b, the instruction after in/out: runtime/clock.py) has
 * a no-op UC_HOOK_CODE.  Unicorn translates it as: write the lazy flags back,
 * call the hook, check for a stop, then compute EFLAGS into CC_SRC and switch
 * the translator's operation to CC_OP_EFLAGS.  The operation recorded for the
 * instruction's restart point is the one from *before* that switch.  So when
 * the instruction then calls a helper that restores the CPU state from its
 * restart point before calling hooks (rdtsc/rdtscp, in/out, cpuid, memory
 * hooks: Unicorn's cpu_restore_state), the engine is left with CC_SRC = the
 * computed flags but cc_op = the older operation (say ADDL): the next block
 * computes EFLAGS from that mix (the fuzzer's program 1825: `out` then rdtsc
 * after an add gave EFLAGS 0x16 instead of 0x817; tests/runtime/test_clock.py).
 * Inside such a helper, at a site, the right operation is always CC_OP_EFLAGS
 * (the computation ran right before the instruction and nothing since changed
 * the flags), so the hooks called there put it back. */
#define CC_OP_EFLAGS 1u

static void site_flags(void *clock)
{
    Clock *c = clock;
    uint32_t op, eip;
    if (c->cc_op_off < 0 || !c->env || !c->nhooked)
        return;
    memcpy(&op, c->env + c->cc_op_off, 4);
    if (op <= CC_OP_EFLAGS)         /* DYNAMIC is never stored; EFLAGS is consistent */
        return;
    memcpy(&eip, c->env + c->site_eip_off, 4);
    if (!is_hooked(c, eip))
        return;
    op = CC_OP_EFLAGS;
    memcpy(c->env + c->cc_op_off, &op, 4);
    c->flag_repairs++;
}

/* -- Time-stamp counter -----------------------------------------------------------
 * rdtsc and rdtscp answered here, with no exit into Python (issue 19: a Linux
 * boot makes ~1.7 M of them).  Unicorn's rdtsc/rdtscp helpers call the
 * UC_HOOK_INSN hooks registered for them after the CR4.TSD check and with EIP
 * synced to the instruction (tests/runtime/test_tsc_native.py); a hook that
 * returns 1 replaces the host read.  The value is runtime/tsc.py's model,
 * computed as VM.now() computes it: the slice's virtual start plus the
 * instructions started before this one (the clock's position of EIP in the
 * running block), plus the TSC offset; both live in tsc_base, set by the VM
 * before each slice. */
static uint64_t tsc_now(Clock *c)
{
    uint32_t eip;
    memcpy(&eip, c->env + c->eip_off, 4);
    long j = index_of(c->cur, eip);
    uint64_t started = j < 0 ? c->count : c->cur_base + weight(c, c->cur, (uint32_t)j + 1);
    return c->tsc_base + (started ? started - 1 : 0);
}

/* The running instruction's virtual time, VM.now() computed natively, for
 * other native hooks (runtime/_iofast.c: the PIT's counter reads). */
static uint64_t vtime_now(void *clock)
{
    Clock *c = clock;
    return c->vtime_base + (tsc_now(c) - c->tsc_base);
}

static int rdtsc_hook(void *uc, void *ud)
{
    Clock *c = ud;
    site_flags(c);
    uint64_t v = tsc_now(c), lo = v & 0xFFFFFFFFu, hi = v >> 32;
    c->reg_write(uc, c->reg_eax, &lo);
    c->reg_write(uc, c->reg_edx, &hi);
    c->tsc_reads++;
    return 1;
}

static int rdtscp_hook(void *uc, void *ud)
{
    Clock *c = ud;
    uint64_t aux = 0;           /* IA32_TSC_AUX: one CPU (runtime/tsc.py TSC_AUX) */
    rdtsc_hook(uc, ud);
    c->reg_write(uc, c->reg_ecx, &aux);
    return 1;
}

static void noop_hook(void *uc, uint64_t addr, uint32_t size, void *ud)
{
    /* Its presence is the point: Unicorn writes the lazy flags state back before
     * calling a code hook, which cmpxchg8b's helper needs (runtime/clock.py). */
}

/* -- Python interface ------------------------------------------------------------- */
static void Clock_dealloc(Clock *c)
{
    for (size_t i = 0; c->buckets && i < c->nbuckets; i++) {
        Entry *e = c->buckets[i];
        while (e) {
            Entry *next = e->next;
            free(e->offs);
            if (e->bytes != e->head)
                free(e->bytes);
            free(e->fix);
            free(e);
            e = next;
        }
    }
    free(c->buckets);
    free(c->wlog);
    for (uint64_t i = 0; i < c->ram_pages; i++) {
        Py_XDECREF(c->code_obj[i]);
        Py_XDECREF(c->interior_obj[i]);
        Py_XDECREF(c->hide_obj[i]);
    }
    free(c->code);
    free(c->code_obj);
    free(c->interior);
    free(c->interior_obj);
    free(c->hide);
    free(c->hide_obj);
    free(c->dirty);
    free(c->view);
    Py_XDECREF(c->stub_starts_obj);
    free(c->hooked);
    free(c->tmp);
    free(c->otmp);
    fs_free(&c->fs);
    if (c->insn && c->cs_free)
        c->cs_free(c->insn, 1);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int Clock_init(Clock *c, PyObject *args, PyObject *kw)
{
    unsigned long long stop, vread, cs, iter, cmalloc, cfree;
    unsigned int fix_id;
    if (!PyArg_ParseTuple(args, "KKKKKKI", &stop, &vread, &cs, &iter, &cmalloc, &cfree, &fix_id))
        return -1;
    c->fix_id = fix_id;
    c->efer_off = -1;
    c->emu_stop = (uc_emu_stop_t)(uintptr_t)stop;
    c->vmem_read = (uc_vmem_read_t)(uintptr_t)vread;
    c->cs = (size_t)cs;
    c->iter = (cs_disasm_iter_t)(uintptr_t)iter;
    c->cs_free = (cs_free_t)(uintptr_t)cfree;
    c->insn = ((cs_malloc_t)(uintptr_t)cmalloc)(c->cs);
    c->nbuckets = 4096;
    c->cache_limit = DEFAULT_CACHE_LIMIT;
    c->buckets = calloc(c->nbuckets, sizeof(Entry *));
    c->wlog = calloc(MAX_WRITES, sizeof *c->wlog);
    if (!c->insn || !c->buckets || !c->wlog) {
        PyErr_NoMemory();
        return -1;
    }
    c->budget = UINT64_MAX;
    c->allow_once = NO_ADDR;
    c->walked = NO_ADDR;
    c->rf_at = NO_ADDR;
    c->hflags_off = -1;
    c->cs16_hflags_off = -1;
    c->eflags_off = -1;
    c->if_hflags_off = -1;
    c->cc_op_off = -1;
    c->site_eip_off = -1;
    return 0;
}

static PyObject *Clock_begin(Clock *c, PyObject *arg)
{
    unsigned long long budget = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    unswap(c);          /* a load that faulted after its READ hook got no READ_AFTER */
    c->count = 0;
    c->budget = budget;
    c->cur = NULL;
    c->cur_base = 0;
    c->reason = STOP_NONE;
    c->stop_entry = NULL;
    c->stop_block = NO_ADDR;
    Py_RETURN_NONE;
}

/* decode_code16(CS_MODE_16 capstone handle, hflags offset): blocks of 16-bit
 * code are decoded with that handle (every mode; runtime/clock.py) */
static PyObject *Clock_decode_code16(Clock *c, PyObject *args)
{
    unsigned long long h;
    Py_ssize_t hf;
    if (!PyArg_ParseTuple(args, "Kn", &h, &hf))
        return NULL;
    if (!c->env || hf < 0) {
        PyErr_SetString(PyExc_ValueError, "16-bit decoding needs the live CPU state (set_env)");
        return NULL;
    }
    c->cs16 = (size_t)h;
    c->cs16_hflags_off = hf;
    Py_RETURN_NONE;
}

/* watch_irq_window(eflags offset, hflags offset): configure the window check */
static PyObject *Clock_watch_irq_window(Clock *c, PyObject *args)
{
    Py_ssize_t fl, hf;
    if (!PyArg_ParseTuple(args, "nn", &fl, &hf))
        return NULL;
    if (!c->env || fl < 0 || hf < 0) {
        PyErr_SetString(PyExc_ValueError, "the window check needs the live CPU state (set_env)");
        return NULL;
    }
    c->eflags_off = fl;
    c->if_hflags_off = hf;
    Py_RETURN_NONE;
}

/* stop_after_io(in id, out id): from now on, decoded blocks list the
 * instruction after each in/out among their sync-hook sites (the cmpxchg8b
 * mechanism, runtime/clock.py), so a stop requested from the I/O hook takes
 * effect before that instruction instead of at the end of the block (Unicorn
 * checks for a stop before an instruction only where a code hook is:
 * tests/runtime/test_unicorn_block_facts.py).  Blocks decoded before keep
 * their sites: call it before the first run. */
static PyObject *Clock_stop_after_io(Clock *c, PyObject *args)
{
    unsigned int in_id, out_id;
    if (!PyArg_ParseTuple(args, "II", &in_id, &out_id))
        return NULL;
    c->in_id = in_id;
    c->out_id = out_id;
    c->io_stops = true;
    Py_RETURN_NONE;
}

/* fix_smsw(capstone id of smsw): every smsw becomes a site of the block's
 * fix list, so the clock stops before its block until the VMM hooked it
 * (runtime/clock.py `fix_handlers`, runtime/smswfix.py). */
static PyObject *Clock_fix_smsw(Clock *c, PyObject *args)
{
    unsigned int id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    c->smsw_id = id;
    Py_RETURN_NONE;
}

/* fix_model_sites(rdmsr id, wrmsr id): rdmsr, wrmsr and `mov cr4, r32` join
 * the fix list (runtime/cpucheck.py: the CPU model's #GP under emulate). */
static PyObject *Clock_fix_model_sites(Clock *c, PyObject *args)
{
    unsigned int rd, wr;
    if (!PyArg_ParseTuple(args, "II", &rd, &wr))
        return NULL;
    c->rdmsr_id = rd;
    c->wrmsr_id = wr;
    c->model_sites = true;
    Py_RETURN_NONE;
}

/* set_irq_wait(bool): stop before the first block with the window open */
static PyObject *Clock_set_irq_wait(Clock *c, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    if (on && c->eflags_off < 0) {
        PyErr_SetString(PyExc_RuntimeError, "watch_irq_window was not called");
        return NULL;
    }
    c->irq_wait = on;
    Py_RETURN_NONE;
}

/* shadow_carry(): the next block still runs in an sti shadow (see "Interrupt window") */
static PyObject *Clock_shadow_carry(Clock *c, PyObject *unused)
{
    return PyBool_FromLong(c->shadow_carry);
}

static PyObject *Clock_resume(Clock *c, PyObject *unused)
{
    unswap(c);          /* as in begin: no block is translated from swapped bytes */
    c->reason = STOP_NONE;
    Py_RETURN_NONE;
}

/* run_whole(): the block stopped before runs whole, past the budget (the
 * runner's exit at the budget's instruction did not shorten it: QEMU ends a
 * block at an instruction breakpoint before Unicorn checks its exits there,
 * runtime/clock.py `run`). */
static PyObject *Clock_run_whole(Clock *c, PyObject *unused)
{
    unswap(c);
    if (c->stop_entry)
        c->budget = c->count + weight(c, c->stop_entry, c->stop_entry->ninsn);
    c->reason = STOP_NONE;
    Py_RETURN_NONE;
}

static PyObject *Clock_unhooked(Clock *c, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    Entry *e = c->stop_entry;
    for (uint32_t i = 0; out && e && i < e->nfix; i++) {
        if (is_hooked(c, e->fix[i]))
            continue;
        PyObject *v = PyLong_FromUnsignedLongLong(e->fix[i]);
        if (!v || PyList_Append(out, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

static PyObject *Clock_mark_hooked(Clock *c, PyObject *arg)
{
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (is_hooked(c, a))
        Py_RETURN_NONE;
    if (c->nhooked == c->hooked_cap) {
        size_t cap = c->hooked_cap ? 2 * c->hooked_cap : 16;
        uint64_t *h = realloc(c->hooked, sizeof(uint64_t) * cap);
        if (!h)
            return PyErr_NoMemory();
        c->hooked = h;
        c->hooked_cap = cap;
    }
    size_t i = hooked_slot(c, a);
    memmove(c->hooked + i + 1, c->hooked + i, sizeof(uint64_t) * (c->nhooked - i));
    c->hooked[i] = a;
    c->nhooked++;
    Py_RETURN_NONE;
}

static PyObject *Clock_reached(Clock *c, PyObject *unused)
{
    c->reason = STOP_AT;
    c->cur = NULL;
    Py_RETURN_NONE;
}

static PyObject *Clock_boundary(Clock *c, PyObject *arg)
{
    long k = PyLong_AsLong(arg);
    if (PyErr_Occurred())
        return NULL;
    Entry *e = c->stop_entry;
    long i = k >= 0 ? find_boundary(c, e, (uint64_t)k) : -1;
    if (i < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)(e->addr + e->offs[i]),
                         (unsigned long long)e->size);
}

/* Clock.cut, also called from the native exit hook (runtime/_exits.c, through
 * `cut_address`), which handles some exits without Python. */
static bool native_cut(void *clock, uint64_t eip, int started)
{
    Clock *c = clock;
    long j = index_of(c->cur, eip);
    if (j < 0) {
        /* EIP at the end of the block (an int n that ended it): nothing to cut */
        return false;
    }
    c->count = c->cur_base + weight(c, c->cur, (uint32_t)j + (started ? 1 : 0));
    c->cur = NULL;
    return true;
}

static PyObject *Clock_cut(Clock *c, PyObject *args)
{
    unsigned long long eip;
    int started;
    if (!PyArg_ParseTuple(args, "Kp", &eip, &started))
        return NULL;
    return PyBool_FromLong(native_cut(c, eip, started));
}

static PyObject *Clock_started(Clock *c, PyObject *arg)
{
    unsigned long long eip = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    long j = index_of(c->cur, eip);
    if (j < 0)
        return PyLong_FromUnsignedLongLong(c->count);
    return PyLong_FromUnsignedLongLong(c->cur_base + weight(c, c->cur, (uint32_t)j + 1));
}

static PyObject *Clock_next(Clock *c, PyObject *arg)
{
    unsigned long long eip = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    Entry *e = c->cur;
    long j = index_of(e, eip);
    if (j < 0)
        Py_RETURN_NONE;
    uint64_t next = (uint64_t)j + 1 < e->ninsn ? e->addr + e->offs[j + 1] : e->addr + e->size;
    return PyLong_FromUnsignedLongLong(next);
}

static PyObject *Clock_set_regions(Clock *c, PyObject *arg)
{
    PyObject *seq = PySequence_Fast(arg, "regions must be a sequence");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_REGIONS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many memory regions");
        return NULL;
    }
    Region r[MAX_REGIONS];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long base, size, host;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KKK", &base, &size, &host)) {
            Py_DECREF(seq);
            return NULL;
        }
        r[i].base = base;
        r[i].size = size;
        r[i].host = (uint8_t *)(uintptr_t)host;
    }
    Py_DECREF(seq);
    memcpy(c->regions, r, sizeof(Region) * (size_t)n);
    c->nregions = (int)n;
    c->walk_epoch++;            /* remembered walks read through the old regions */
    Py_RETURN_NONE;
}

static PyObject *Clock_set_env(Clock *c, PyObject *args)
{
    unsigned long long env;
    Py_ssize_t cr0, cr3, cr4, efer = -1;
    if (!PyArg_ParseTuple(args, "Knnn|n", &env, &cr0, &cr3, &cr4, &efer))
        return NULL;
    c->env = (uint8_t *)(uintptr_t)env;
    c->cr0_off = cr0;
    c->cr3_off = cr3;
    c->cr4_off = cr4;
    c->efer_off = efer;
    c->walk_epoch++;
    Py_RETURN_NONE;
}

/* enable_fast_stores(uc_ctl address, TLB-flush request, f[0] offset from env,
 * modes, entry bits, addr_write offset, paddr offset, hflags offset, RAM bytes): see
 * runtime/faststores.h (needs set_env) */
static PyObject *Clock_enable_fast_stores(Clock *c, PyObject *args)
{
    unsigned long long ctl, ram;
    int req, modes, bits;
    Py_ssize_t fast, wr, pa, hflags;
    if (!PyArg_ParseTuple(args, "KiniinnnK", &ctl, &req, &fast, &modes, &bits, &wr, &pa, &hflags, &ram))
        return NULL;
    if (!c->env || modes < 1 || bits < 5 || hflags < 0) {
        PyErr_SetString(PyExc_ValueError, "fast stores need the live CPU state (set_env) and a TLB layout");
        return NULL;
    }
    fs_free(&c->fs);
    FastStores *f = &c->fs;
    f->epoch++;                 /* marks entries hold for an earlier table are void (block_hook) */
    for (size_t i = 0; i < FRONT; i++)
        c->quick[i].quick = 0;  /* the quick path assumes its block's page is marked */
    f->pages = (ram + PAGE_OFF) >> PAGE_SHIFT;
    f->code = calloc(f->pages ? f->pages : 1, 1);
    f->cleaned = calloc(f->pages ? f->pages : 1, 1);
    if (!f->code || !f->cleaned) {
        fs_free(f);
        return PyErr_NoMemory();
    }
    f->ctl = (fs_ctl_t)(uintptr_t)ctl;
    f->flush_req = req;
    f->modes = modes;
    f->bits = bits;
    f->write_off = (size_t)wr;
    f->hflags = c->env + hflags;
    f->paddr_off = (size_t)pa;
    f->at = 0;
    f->fast = c->env + fast;
    Py_RETURN_NONE;
}

/* watch_generation(address of tb_phys_invalidate_count, address of
 * tb_flush_count): blocks known unchanged skip the comparison (see "Blocks
 * known unchanged"); only where every code page keeps TLB_NOTDIRTY */
static PyObject *Clock_watch_generation(Clock *c, PyObject *args)
{
    unsigned long long inv, fl;
    if (!PyArg_ParseTuple(args, "KK", &inv, &fl))
        return NULL;
    c->tb_invalidated = (const uint64_t *)(uintptr_t)inv;
    c->tb_flushed = (const uint32_t *)(uintptr_t)fl;
    Py_RETURN_NONE;
}

/* watch_site_flags(cc_op offset, eip offset): repair the lazy flags in hooks
 * called at sync sites (needs set_env) */
static PyObject *Clock_watch_site_flags(Clock *c, PyObject *args)
{
    Py_ssize_t op, eip;
    if (!PyArg_ParseTuple(args, "nn", &op, &eip))
        return NULL;
    if (!c->env || op < 0 || eip < 0) {
        PyErr_SetString(PyExc_ValueError, "the lazy-flags repair needs the live CPU state (set_env)");
        return NULL;
    }
    c->cc_op_off = op;
    c->site_eip_off = eip;
    Py_RETURN_NONE;
}

static PyObject *Clock_repair_site_flags(Clock *c, PyObject *unused)
{
    site_flags(c);
    Py_RETURN_NONE;
}

/* set_recur_mem(address of the engine's size_recur_mem, or 0) */
static PyObject *Clock_set_recur_mem(Clock *c, PyObject *arg)
{
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    c->recur_mem = (int32_t *)(uintptr_t)a;
    Py_RETURN_NONE;
}

/* set_stub_starts(stub cache address, bytearray of weights or None) */
static PyObject *Clock_set_stub_starts(Clock *c, PyObject *args)
{
    unsigned long long lo;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "KO", &lo, &obj))
        return NULL;
    if (obj != Py_None && !PyByteArray_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "stub starts are a bytearray");
        return NULL;
    }
    Py_XDECREF(c->stub_starts_obj);
    c->stub_starts_obj = NULL;
    c->stub_starts = NULL;
    c->stub_lo = lo;
    c->stub_size = 0;
    if (obj != Py_None) {
        Py_INCREF(obj);          /* never resized by its owner: the buffer stays */
        c->stub_starts_obj = obj;
        c->stub_starts = (uint8_t *)PyByteArray_AS_STRING(obj);
        c->stub_size = (uint64_t)PyByteArray_GET_SIZE(obj);
    }
    Py_RETURN_NONE;
}

static PyObject *Clock_enable_code_check(Clock *c, PyObject *args)
{
    unsigned long long ram;
    Py_ssize_t hflags;
    if (!PyArg_ParseTuple(args, "Kn", &ram, &hflags))
        return NULL;
    if (c->code) {
        PyErr_SetString(PyExc_RuntimeError, "code check already enabled");
        return NULL;
    }
    uint64_t n = (ram + PAGE_OFF) >> PAGE_SHIFT;
    c->code = calloc(n, sizeof(uint8_t *));
    c->code_obj = calloc(n, sizeof(PyObject *));
    c->interior = calloc(n, sizeof(uint8_t *));
    c->interior_obj = calloc(n, sizeof(PyObject *));
    c->dirty = calloc(n, 1);
    c->hide = calloc(n, sizeof(uint8_t *));
    c->hide_obj = calloc(n, sizeof(PyObject *));
    c->view = malloc(n * sizeof(uint32_t));
    if (!c->code || !c->code_obj || !c->interior || !c->interior_obj || !c->dirty || !c->hide
        || !c->hide_obj || !c->view)
        return PyErr_NoMemory();
    for (uint64_t i = 0; i < n; i++)
        c->view[i] = NO_VIEW;
    c->ram_pages = n;
    c->hflags_off = hflags;
    c->check = true;
    Py_RETURN_NONE;
}

/* set_page(which, page base, bytearray or None): 0 = scanned flags, 1 = patch
 * interior (PAGE bytes each), 2 = hidden patch bytes (2 * PAGE: mask, guest bytes) */
static PyObject *Clock_set_page(Clock *c, PyObject *args)
{
    int which;
    unsigned long long base;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "iKO", &which, &base, &obj))
        return NULL;
    uint64_t pg = base >> PAGE_SHIFT;
    if (pg >= c->ram_pages) {
        PyErr_SetString(PyExc_ValueError, "page outside RAM (or code check not enabled)");
        return NULL;
    }
    Py_ssize_t want = which == 2 ? 2 * (PAGE_OFF + 1) : PAGE_OFF + 1;
    if (which < 0 || which > 2) {
        PyErr_SetString(PyExc_ValueError, "which: 0 flags, 1 interior, 2 hidden bytes");
        return NULL;
    }
    if (obj != Py_None && (!PyByteArray_Check(obj) || PyByteArray_GET_SIZE(obj) != want)) {
        PyErr_SetString(PyExc_TypeError, "a page table is a bytearray of 4096 bytes (8192 for which=2)");
        return NULL;
    }
    uint8_t **tab = which == 2 ? c->hide : which ? c->interior : c->code;
    PyObject **own = which == 2 ? c->hide_obj : which ? c->interior_obj : c->code_obj;
    Py_XDECREF(own[pg]);
    if (obj == Py_None) {
        own[pg] = NULL;
        tab[pg] = NULL;
    } else {
        Py_INCREF(obj);          /* a bytearray never resized keeps its buffer */
        own[pg] = obj;
        tab[pg] = (uint8_t *)PyByteArray_AS_STRING(obj);
    }
    if (!which)
        c->dirty[pg] = 0;
    Py_RETURN_NONE;
}

/* take_writes() -> (dirty page bases, [(addr, size)], log complete) and reset */
static PyObject *Clock_take_writes(Clock *c, PyObject *unused)
{
    PyObject *pages = PyList_New(0), *log = PyList_New(0);
    if (!pages || !log)
        goto fail;
    for (uint64_t i = 0; i < c->ram_pages; i++) {
        if (!c->dirty[i])
            continue;
        PyObject *v = PyLong_FromUnsignedLongLong(i << PAGE_SHIFT);
        if (!v || PyList_Append(pages, v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    for (uint32_t i = 0; i < c->nwlog; i++) {
        PyObject *v = Py_BuildValue("(KK)", (unsigned long long)c->wlog[i][0],
                                    (unsigned long long)c->wlog[i][1]);
        if (!v || PyList_Append(log, v) < 0) {
            Py_XDECREF(v);
            goto fail;
        }
        Py_DECREF(v);
    }
    bool complete = !c->wlog_lost;
    c->nwlog = 0;
    c->wlog_lost = false;
    return Py_BuildValue("(NNO)", pages, log, complete ? Py_True : Py_False);
fail:
    Py_XDECREF(pages);
    Py_XDECREF(log);
    return NULL;
}

/* set_view(page base, linear page base or None): whose scan the physical page's
 * tables hold (see "Code check") */
static PyObject *Clock_set_view(Clock *c, PyObject *args)
{
    unsigned long long base;
    PyObject *lin;
    if (!PyArg_ParseTuple(args, "KO", &base, &lin))
        return NULL;
    uint64_t pg = base >> PAGE_SHIFT;
    if (pg >= c->ram_pages) {
        PyErr_SetString(PyExc_ValueError, "page outside RAM (or code check not enabled)");
        return NULL;
    }
    if (lin == Py_None) {
        c->view[pg] = NO_VIEW;
        Py_RETURN_NONE;
    }
    unsigned long long l = PyLong_AsUnsignedLongLong(lin);
    if (PyErr_Occurred())
        return NULL;
    c->view[pg] = (uint32_t)(l >> PAGE_SHIFT);
    Py_RETURN_NONE;
}

static PyObject *Clock_has_writes(Clock *c, PyObject *unused)
{
    if (c->nwlog || c->wlog_lost)
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* set_quick(bool): the quick path on (the default) or off.  Off, every block
 * takes the slow path: the reference the quick path must agree with
 * (tests/runtime/test_bt_quick_path.py) and a measurement's A/B switch. */
static PyObject *Clock_set_quick(Clock *c, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    c->quick_off = !on;
    Py_RETURN_NONE;
}

static PyObject *Clock_allow_once(Clock *c, PyObject *arg)
{
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    c->allow_once = a;
    Py_RETURN_NONE;
}

static PyObject *Clock_known_start(Clock *c, PyObject *arg)
{
    unsigned long long a = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    uint64_t pa;
    if (!c->check || code_frame(c, a, &pa) != CF_OK)
        Py_RETURN_FALSE;
    return PyBool_FromLong(known_start(c, pa));
}

static PyObject *Clock_code_stats(Clock *c, PyObject *unused)
{
    return Py_BuildValue("{sKsKsKsK}", "block_checks", (unsigned long long)c->code_checks,
                         "unscanned_starts", (unsigned long long)c->code_stops,
                         "code_writes", (unsigned long long)c->code_writes,
                         "hidden_reads", (unsigned long long)c->hidden_reads);
}

/* cache_info() -> the decoded-block cache's entries, bytes, bound and flushes */
static PyObject *Clock_cache_info(Clock *c, PyObject *unused)
{
    return Py_BuildValue("{snsnsnsK}", "entries", (Py_ssize_t)c->nentries,
                         "bytes", (Py_ssize_t)c->cache_bytes, "limit", (Py_ssize_t)c->cache_limit,
                         "flushes", (unsigned long long)c->cache_flushes);
}

/* set_cache_limit(bytes): the bound past which the cache is emptied */
static PyObject *Clock_set_cache_limit(Clock *c, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    if (n < 256) {
        PyErr_SetString(PyExc_ValueError, "cache limit below 256 bytes");
        return NULL;
    }
    c->cache_limit = (size_t)n;
    Py_RETURN_NONE;
}

static PyObject *Clock_stats(Clock *c, PyObject *unused)
{
    return Py_BuildValue("{sKsKsKsKsKsnsnsKsKsKsKsKsKsKsKsKsKsKsK}", "blocks", (unsigned long long)c->blocks,
                         "decoded_blocks", (unsigned long long)c->misses,
                         "changed_blocks", (unsigned long long)c->changed,
                         "undecodable_tails", (unsigned long long)c->gaps,
                         "slow_reads", (unsigned long long)c->slow_reads,
                         "cached_blocks", (Py_ssize_t)c->nentries,
                         "cmpxchg8b_sync_hooks", (Py_ssize_t)c->nhooked,
                         "smc_restarts", (unsigned long long)c->smc_restarts,
                         "irq_window_stops", (unsigned long long)c->irq_stops,
                         "mem_hooks_revived", (unsigned long long)c->hooks_revived,
                         "site_flag_repairs", (unsigned long long)c->flag_repairs,
                         "store_entries_unmarked", (unsigned long long)c->fs.unmarked,
                         "store_tlb_flushes", (unsigned long long)c->fs.flushes,
                         "store_code_pages", (unsigned long long)c->fs.code_pages,
                         "unchanged_blocks", (unsigned long long)c->unchanged,
                         "walks_remembered", (unsigned long long)c->walks_remembered,
                         "front_misses", (unsigned long long)c->front_misses,
                         "code_frames_reused", (unsigned long long)c->frames_reused,
                         "quick_hits", (unsigned long long)c->quick_hits);
}

/* enable_tsc(uc_reg_write address, eax id, edx id, ecx id, eip offset): the
 * rdtsc/rdtscp hooks may answer (needs set_env) */
static PyObject *Clock_enable_tsc(Clock *c, PyObject *args)
{
    unsigned long long rw;
    int eax, edx, ecx;
    Py_ssize_t eip;
    if (!PyArg_ParseTuple(args, "Kiiin", &rw, &eax, &edx, &ecx, &eip))
        return NULL;
    if (!c->env || eip < 0) {
        PyErr_SetString(PyExc_ValueError, "the native TSC needs the live CPU state (set_env)");
        return NULL;
    }
    c->reg_write = (uc_reg_write_t)(uintptr_t)rw;
    c->reg_eax = eax;
    c->reg_edx = edx;
    c->reg_ecx = ecx;
    c->eip_off = eip;
    Py_RETURN_NONE;
}

static PyObject *Clock_set_tsc_base(Clock *c, PyObject *arg)
{
    unsigned long long b = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    c->tsc_base = b;
    Py_RETURN_NONE;
}

static PyObject *Clock_set_vtime_base(Clock *c, PyObject *arg)
{
    unsigned long long b = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    c->vtime_base = b;
    Py_RETURN_NONE;
}

static PyObject *Clock_get_tsc_reads(Clock *c, void *u) { return PyLong_FromUnsignedLongLong(c->tsc_reads); }

static PyObject *Clock_get_count(Clock *c, void *u) { return PyLong_FromUnsignedLongLong(c->count); }
static PyObject *Clock_get_reason(Clock *c, void *u) { return PyLong_FromLong(c->reason); }
static PyObject *Clock_get_rf_at(Clock *c, void *u)
{
    if (c->rf_at == NO_ADDR)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c->rf_at);
}

static PyObject *Clock_get_stop_block(Clock *c, void *u)
{
    if (c->stop_block == NO_ADDR)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c->stop_block);
}

static PyMethodDef Clock_methods[] = {
    {"begin", (PyCFunction)Clock_begin, METH_O, "begin(budget): a new slice"},
    {"reached", (PyCFunction)Clock_reached, METH_NOARGS, "the slice ended at the budget's exit"},
    {"resume", (PyCFunction)Clock_resume, METH_NOARGS, "forget the last stop before re-running"},
    {"run_whole", (PyCFunction)Clock_run_whole, METH_NOARGS,
     "resume, letting the block stopped before run whole past the budget"},
    {"decode_code16", (PyCFunction)Clock_decode_code16, METH_VARARGS,
     "decode_code16(CS_MODE_16 handle, hflags offset): 16-bit blocks decoded as such"},
    {"watch_irq_window", (PyCFunction)Clock_watch_irq_window, METH_VARARGS,
     "watch_irq_window(eflags offset, hflags offset) in the live CPU state (every mode)"},
    {"stop_after_io", (PyCFunction)Clock_stop_after_io, METH_VARARGS,
     "stop_after_io(in id, out id): VMM stops from I/O hooks land right after the instruction"},
    {"shadow_carry", (PyCFunction)Clock_shadow_carry, METH_NOARGS,
     "shadow_carry(): the next block runs in the sti shadow a weightless block left"},
    {"set_irq_wait", (PyCFunction)Clock_set_irq_wait, METH_O,
     "set_irq_wait(on): stop before the first block where IF is 1 outside a shadow"},
    {"fix_model_sites", (PyCFunction)Clock_fix_model_sites, METH_VARARGS,
     "fix_model_sites(rdmsr id, wrmsr id): rdmsr/wrmsr/mov cr4 join the fix list"},
    {"fix_smsw", (PyCFunction)Clock_fix_smsw, METH_VARARGS,
     "fix_smsw(capstone id): smsw sites join the fix list (runtime/smswfix.py)"},
    {"unhooked", (PyCFunction)Clock_unhooked, METH_NOARGS,
     "cmpxchg8b sites of the block stopped before that need a sync hook"},
    {"mark_hooked", (PyCFunction)Clock_mark_hooked, METH_O, "mark_hooked(addr): its hook exists"},
    {"boundary", (PyCFunction)Clock_boundary, METH_O,
     "boundary(k) -> (address of instruction k, block size) in the block stopped before"},
    {"cut", (PyCFunction)Clock_cut, METH_VARARGS,
     "cut(eip, started): the current block ended at eip (True when corrected)"},
    {"started", (PyCFunction)Clock_started, METH_O,
     "started(eip) -> instructions started in this slice, the one at eip included"},
    {"next", (PyCFunction)Clock_next, METH_O,
     "next(eip) -> address of the instruction after eip in the running block, or None"},
    {"set_regions", (PyCFunction)Clock_set_regions, METH_O,
     "set_regions([(phys base, size, host address)]): where block bytes live"},
    {"set_env", (PyCFunction)Clock_set_env, METH_VARARGS,
     "set_env(env, cr0_off, cr3_off, cr4_off[, efer_off]): the live CPU state (paging)"},
    {"stats", (PyCFunction)Clock_stats, METH_NOARGS, "counters of the clock itself"},
    {"watch_generation", (PyCFunction)Clock_watch_generation, METH_VARARGS,
     "watch_generation(invalidation counter address, flush counter address)"},
    {"enable_fast_stores", (PyCFunction)Clock_enable_fast_stores, METH_VARARGS,
     "enable_fast_stores(ctl, flush request, f offset, modes, entry bits, write off, paddr off, hflags off, RAM bytes)"},
    {"watch_site_flags", (PyCFunction)Clock_watch_site_flags, METH_VARARGS,
     "watch_site_flags(cc_op offset, eip offset): repair the lazy flags in hooks at sync sites"},
    {"repair_site_flags", (PyCFunction)Clock_repair_site_flags, METH_NOARGS,
     "from a hook inside an instruction: put cc_op back to CC_OP_EFLAGS if it is a sync site"},
    {"set_recur_mem", (PyCFunction)Clock_set_recur_mem, METH_O,
     "set_recur_mem(address): the engine's size_recur_mem, cleared at every block start"},
    {"set_quick", (PyCFunction)Clock_set_quick, METH_O, "the block hook's quick path on (True, the default) or off"},
    {"cache_info", (PyCFunction)Clock_cache_info, METH_NOARGS, "the decoded-block cache: entries, bytes, limit, flushes"},
    {"set_cache_limit", (PyCFunction)Clock_set_cache_limit, METH_O, "set_cache_limit(bytes): empty the cache past this size"},
    {"set_stub_starts", (PyCFunction)Clock_set_stub_starts, METH_VARARGS,
     "set_stub_starts(stub cache address, bytearray): guest instructions starting per stub byte"},
    {"enable_code_check", (PyCFunction)Clock_enable_code_check, METH_VARARGS,
     "enable_code_check(ram bytes, hflags offset): check guest-kernel block starts (bt)"},
    {"set_page", (PyCFunction)Clock_set_page, METH_VARARGS,
     "set_page(0 = scanned flags | 1 = patch interior | 2 = hidden bytes, page base, bytearray or None)"},
    {"take_writes", (PyCFunction)Clock_take_writes, METH_NOARGS,
     "take_writes() -> (dirty pages, [(addr, size)], complete); clears the log"},
    {"has_writes", (PyCFunction)Clock_has_writes, METH_NOARGS, "code writes logged since the last take"},
    {"allow_once", (PyCFunction)Clock_allow_once, METH_O, "allow_once(addr): let one unscannable start run"},
    {"known_start", (PyCFunction)Clock_known_start, METH_O, "known_start(addr): the block check's verdict"},
    {"set_view", (PyCFunction)Clock_set_view, METH_VARARGS, "set_view(page, linear page or None): the linear page whose scan a physical page holds"},
    {"enable_tsc", (PyCFunction)Clock_enable_tsc, METH_VARARGS,
     "enable_tsc(uc_reg_write, eax, edx, ecx register ids, eip offset): native rdtsc/rdtscp"},
    {"set_tsc_base", (PyCFunction)Clock_set_tsc_base, METH_O,
     "set_tsc_base(v): the TSC at the slice's first instruction"},
    {"set_vtime_base", (PyCFunction)Clock_set_vtime_base, METH_O,
     "set_vtime_base(v): the virtual time at the slice's first instruction (vtime_now)"},
    {"code_stats", (PyCFunction)Clock_code_stats, METH_NOARGS, "counters of the code check"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Clock_getset[] = {
    {"count", (getter)Clock_get_count, NULL, "instructions started in this slice", NULL},
    {"reason", (getter)Clock_get_reason, NULL, "0 running/none, 1 before a block, 2 at the budget", NULL},
    {"tsc_reads", (getter)Clock_get_tsc_reads, NULL, "rdtsc/rdtscp answered natively", NULL},
    {"stop_block", (getter)Clock_get_stop_block, NULL, "block stopped before", NULL},
    {"rf_at", (getter)Clock_get_rf_at, NULL, "the running block's start if it began with RF set", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ClockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runtime._clock.Clock",
    .tp_basicsize = sizeof(Clock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Clock_init,
    .tp_dealloc = (destructor)Clock_dealloc,
    .tp_methods = Clock_methods,
    .tp_getset = Clock_getset,
    .tp_doc = "Counts guest instructions per translated block (see runtime/clock.py).",
};

static PyObject *callbacks(PyObject *m, PyObject *unused)
{
    return Py_BuildValue("(KKKKKKK)", (unsigned long long)(uintptr_t)&block_hook,
                         (unsigned long long)(uintptr_t)&noop_hook,
                         (unsigned long long)(uintptr_t)&write_hook,
                         (unsigned long long)(uintptr_t)&read_before,
                         (unsigned long long)(uintptr_t)&read_after,
                         (unsigned long long)(uintptr_t)&rdtsc_hook,
                         (unsigned long long)(uintptr_t)&rdtscp_hook);
}

static PyObject *vtime_now_address(PyObject *m, PyObject *unused)
{
    return PyLong_FromVoidPtr((void *)&vtime_now);
}

static PyObject *site_flags_address(PyObject *m, PyObject *unused)
{
    return PyLong_FromVoidPtr((void *)&site_flags);
}

static PyObject *cut_address(PyObject *m, PyObject *unused)
{
    return PyLong_FromVoidPtr((void *)&native_cut);
}

static PyMethodDef module_methods[] = {
    {"vtime_now_address", vtime_now_address, METH_NOARGS,
     "address of uint64_t vtime_now(Clock *): the running instruction's virtual time (needs enable_tsc)"},
    {"site_flags_address", site_flags_address, METH_NOARGS,
     "address of void site_flags(Clock *) for native hooks called inside an instruction"},
    {"cut_address", cut_address, METH_NOARGS, "address of bool cut(Clock *, eip, started) for native hooks"},
    {"callbacks", callbacks, METH_NOARGS, "(block, no-op code, code write, read before, read after, rdtsc, rdtscp) hook C function addresses"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef clockmodule = {PyModuleDef_HEAD_INIT, "_clock", NULL, -1, module_methods};

PyMODINIT_FUNC PyInit__clock(void)
{
    if (PyType_Ready(&ClockType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&clockmodule);
    if (!m)
        return NULL;
    Py_INCREF(&ClockType);
    if (PyModule_AddObject(m, "Clock", (PyObject *)&ClockType) < 0) {
        Py_DECREF(&ClockType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "STOP_NONE", STOP_NONE);
    PyModule_AddIntConstant(m, "STOP_BEFORE", STOP_BEFORE);
    PyModule_AddIntConstant(m, "STOP_AT", STOP_AT);
    PyModule_AddIntConstant(m, "STOP_FIX", STOP_FIX);
    PyModule_AddIntConstant(m, "STOP_SCAN", STOP_SCAN);
    PyModule_AddIntConstant(m, "STOP_IRQ", STOP_IRQ);
    return m;
}
