/* Fast stores: guest stores to RAM pages that hold no translated code take
 * Unicorn's inline fast path, as they do in QEMU (issue 19; runtime/softtlb.py
 * explains the engine side, tests/runtime/test_store_facts.py pins it).
 *
 * Unicorn 2.1.4 marks every TLB entry of writable RAM TLB_NOTDIRTY and, on an
 * x86 page without NX, never clears the mark, so every store runs
 * store_helper -> notdirty_write -> tb_invalidate_phys_page_fast.  QEMU keeps
 * the mark only where translated code lives, so that a store there invalidates
 * the code.  This does the same from the outside, with the instruction clock's
 * block hook as the only observer it needs (every execution of a translated
 * block calls it before the block's first instruction):
 *
 *   - code pages: the physical pages of every block the hook sees are
 *     remembered for good (`code`).  A translated block is executed right after
 *     it is translated, and its hook runs first, so a page holds translated
 *     code only once the hook has seen a block on it.
 *   - sweep: at every FS_EVERY-th block start the hook looks at the next TLB
 *     entry, round robin over the table of the MMU mode in use, and clears TLB_NOTDIRTY in `addr_write`
 *     of an entry whose flags are exactly TLB_NOTDIRTY (not I/O, not invalid,
 *     no watchpoint) and whose physical page is RAM that is not a code page;
 *     that page is remembered in `cleaned`.
 *   - a page becoming code: when the hook first sees a block on a page that
 *     is in `cleaned`, some TLB entry (or a victim-TLB copy) may still let
 *     stores into it bypass the code check, so the whole TLB is flushed
 *     (uc_ctl TLB_FLUSH; refills come back marked) before that block runs,
 *     and `cleaned` is emptied.
 *
 * Pages that hold code keep the mark, so self-modifying code is seen exactly
 * as before: by Unicorn, at the store.  Pages are never removed from `code`
 * (a page that once held code stays on the slow path): conservative.
 */
#ifndef BT_FASTSTORES_H
#define BT_FASTSTORES_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FS_NOTDIRTY 0x400u      /* TLB_NOTDIRTY (runtime/softtlb.py) */
#define FS_FLAGS 0xFFFu         /* the flag bits below the page */
/* One entry looked at every FS_EVERY blocks: each look is a cache miss (one
 * per block was ~9% of a Linux boot's CPU); a 256-entry table is still gone
 * through every ~1,000 blocks. */
#define FS_EVERY 4

typedef int (*fs_ctl_t)(void *uc, int control, ...);

typedef struct {
    uint8_t *fast;              /* f[0]: (mask, table) per MMU mode; NULL = off */
    int modes, bits;
    size_t write_off, paddr_off;
    uint8_t *hflags;            /* the CPU's hflags: which MMU mode is in use */
    uint64_t pages;             /* RAM pages (physical 0 ..) */
    uint8_t *code;              /* page -> 1: a block ran there */
    uint8_t *cleaned;           /* page -> 1: an entry of it may be unmarked */
    fs_ctl_t ctl;
    int flush_req;
    uint64_t at;
    uint32_t tick;
    uint32_t epoch;             /* moves at each enable: entries' code-page marks (Entry.fs_epoch) hold for one */
    /* statistics */
    uint64_t unmarked, flushes, code_pages;
} FastStores;

static inline void fs_free(FastStores *f)
{
    free(f->code);
    free(f->cleaned);
    f->code = f->cleaned = NULL;
    f->fast = NULL;
}

/* A block runs on physical page `page`. */
static inline void fs_code_page(FastStores *f, void *uc, uint64_t page)
{
    if (page >= f->pages || f->code[page])
        return;
    f->code[page] = 1;
    f->code_pages++;
    if (f->cleaned[page]) {
        f->ctl(uc, f->flush_req);
        memset(f->cleaned, 0, f->pages);
        f->flushes++;
    }
}

/* The MMU mode the CPU's loads and stores use now (QEMU's x86 cpu_mmu_index:
 * user 1; kernel 2, or 0 under SMAP -- 2 again with EFLAGS.AC, which is not
 * looked at: then mode 0 is swept in vain, a cost and never a fault). */
#define FS_HF_SMAP (1u << 23)
static inline int fs_mode(const FastStores *f)
{
    uint32_t hf;
    memcpy(&hf, f->hflags, 4);
    int m = (hf & 3) == 3 ? 1 : (hf & FS_HF_SMAP) ? 0 : 2;
    return m < f->modes ? m : 0;
}

/* Every FS_EVERY blocks, the next entry of the current mode's table. */
static inline void fs_sweep(FastStores *f)
{
    uint64_t mask, n;
    uint8_t *table;
    if (++f->tick < FS_EVERY)
        return;
    f->tick = 0;
    int m = fs_mode(f);
    memcpy(&mask, f->fast + 16 * m, 8);
    memcpy(&table, f->fast + 16 * m + 8, 8);
    n = (mask >> f->bits) + 1;
    if (f->at >= n)
        f->at = 0;
    uint8_t *e = table + (f->at++ << f->bits);
    uint64_t w, pa;
    memcpy(&w, e + f->write_off, 8);
    if ((w & FS_FLAGS) != FS_NOTDIRTY)
        return;
    memcpy(&pa, e + f->paddr_off, 8);
    pa >>= 12;
    if (pa < f->pages && !f->code[pa]) {
        w &= ~(uint64_t)FS_NOTDIRTY;
        memcpy(e + f->write_off, &w, 8);
        f->cleaned[pa] = 1;
        f->unmarked++;
    }
}

#endif
