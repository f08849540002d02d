/* The VMM's one native walk of the guest's page tables, shared by the
 * instruction clock (runtime/_clock.c: a block's bytes by linear address) and
 * GuestMemory.translate (runtime/_walk.c, runtime/memory.py).
 *
 * Two-level (4 KiB pages, 4 MiB PSE pages with PSE-36 address bits and the
 * reserved bit 21) and PAE (PDPT -> directory -> table, 8-byte entries, 2 MiB
 * pages, NX with EFER.NXE).  The result and the #PF error code are those of the
 * Python walk in runtime/memory.py, which is pinned to Unicorn's MMU by
 * tests/runtime/test_guest_memory.py; tests/runtime/test_native_walk.py compares
 * the two on random tables.  The constants below are bt/x86.py's.
 *
 * Why native: the Python walk reads every entry through ctypes (about 37 us a
 * walk, two or more walks per exit under paging); this one reads host memory.
 *
 * Table entries are read through `range(ctx, pa, n)` (a host pointer to n bytes
 * of guest-physical memory, or NULL: the walk then fails as the Python walk
 * does for a table outside RAM: a not-present fault). */
#ifndef BT_PAGEWALK_H
#define BT_PAGEWALK_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define PW_P 0x1u
#define PW_W 0x2u
#define PW_U 0x4u
#define PW_PS 0x80u
#define PW_PDE_PS_RESERVED (1u << 21)
#define PW_NX (1ull << 63)
#define PW_PAE_ADDR 0x000000FFFFFFF000ull
#define PW_PAE_RSVD 0x7FFFFF0000000000ull
#define PW_PAE_LARGE_RSVD 0x1FE000ull
#define PW_PAE_PDPTE_RSVD (PW_PAE_RSVD | PW_NX)
#define PW_PAE_LARGE 0x200000ull
#define PW_CR0_PG 0x80000000u
#define PW_CR0_WP 0x10000u
#define PW_CR4_PSE 0x10u
#define PW_CR4_PAE 0x20u
#define PW_EFER_NXE 0x800u
#define PW_ERR_RSVD 0x8u
#define PW_ERR_FETCH 0x10u

/* access bits (the #PF error code's W and U bits, plus a fetch flag) */
#define PW_WRITE 0x2u
#define PW_USER 0x4u
#define PW_FETCH 0x10u

typedef const uint8_t *(*pw_range_t)(void *ctx, uint64_t pa, uint64_t n);

typedef struct {
    uint64_t cr0, cr3, cr4, efer;
} PwRegs;

static inline bool pw_check(const PwRegs *r, uint64_t flags, unsigned access, bool no_exec,
                            uint32_t err, uint32_t *out)
{
    if (no_exec || ((access & PW_USER) && !(flags & PW_U))
        || ((access & PW_WRITE) && !(flags & PW_W) && ((access & PW_USER) || (r->cr0 & PW_CR0_WP)))) {
        *out = err | PW_P;
        return false;
    }
    return true;
}

/* Linear -> physical.  true: *pa holds the address; false: *err holds the
 * #PF error code (W and U from `access`, P, RSVD, I/D as the CPU sets them). */
static inline bool pw_walk(const PwRegs *r, pw_range_t range, void *ctx, uint64_t linear,
                           unsigned access, uint64_t *pa, uint32_t *err)
{
    const uint8_t *p;
    uint32_t e = access & (PW_WRITE | PW_USER);
    linear &= 0xFFFFFFFFu;
    if (!(r->cr4 & PW_CR4_PAE)) {
        uint32_t pde, pte;
        if (!(p = range(ctx, (r->cr3 & 0xFFFFF000u) + ((linear >> 22) << 2), 4)))
            goto not_present;
        memcpy(&pde, p, 4);
        if (!(pde & PW_P))
            goto not_present;
        if ((pde & PW_PS) && (r->cr4 & PW_CR4_PSE)) {
            if (pde & PW_PDE_PS_RESERVED) {
                *err = e | PW_P | PW_ERR_RSVD;
                return false;
            }
            if (!pw_check(r, pde, access, false, e, err))
                return false;
            *pa = ((uint64_t)((pde >> 13) & 0xFF) << 32) | (pde & 0xFFC00000u) | (linear & 0x3FFFFF);
            return true;
        }
        if (!(p = range(ctx, (pde & 0xFFFFF000u) + (((linear >> 12) & 0x3FF) << 2), 4)))
            goto not_present;
        memcpy(&pte, p, 4);
        if (!(pte & PW_P))
            goto not_present;
        if (!pw_check(r, pde & pte, access, false, e, err))
            return false;
        *pa = (pte & 0xFFFFF000u) | (linear & 0xFFF);
        return true;
    }
    bool nxe = (r->efer & PW_EFER_NXE) != 0;
    bool fetch_nx = (access & PW_FETCH) && nxe;
    if (fetch_nx)
        e |= PW_ERR_FETCH;
    uint64_t rsvd = nxe ? PW_PAE_RSVD : (PW_PAE_RSVD | PW_NX);
    uint64_t pdpte, pde, pte;
    if (!(p = range(ctx, (r->cr3 & 0xFFFFFFE0u) + ((linear >> 30) << 3), 8)))
        goto not_present;
    memcpy(&pdpte, p, 8);
    if (!(pdpte & PW_P))
        goto not_present;
    if (pdpte & PW_PAE_PDPTE_RSVD)
        goto reserved;
    if (!(p = range(ctx, (pdpte & PW_PAE_ADDR) + (((linear >> 21) & 0x1FF) << 3), 8)))
        goto not_present;
    memcpy(&pde, p, 8);
    if (!(pde & PW_P))
        goto not_present;
    if ((pde & rsvd) || ((pde & PW_PS) && (pde & PW_PAE_LARGE_RSVD)))
        goto reserved;
    if (pde & PW_PS) {
        if (!pw_check(r, pde, access, fetch_nx && (pde & PW_NX), e, err))
            return false;
        *pa = (pde & PW_PAE_ADDR & ~(PW_PAE_LARGE - 1)) | (linear & (PW_PAE_LARGE - 1));
        return true;
    }
    if (!(p = range(ctx, (pde & PW_PAE_ADDR) + (((linear >> 12) & 0x1FF) << 3), 8)))
        goto not_present;
    memcpy(&pte, p, 8);
    if (!(pte & PW_P))
        goto not_present;
    if (pte & rsvd)
        goto reserved;
    if (!pw_check(r, pde & pte, access, fetch_nx && ((pde | pte) & PW_NX), e, err))
        return false;
    *pa = (pte & PW_PAE_ADDR) | (linear & 0xFFF);
    return true;
not_present:
    *err = e;
    return false;
reserved:
    *err = e | PW_P | PW_ERR_RSVD;
    return false;
}

#endif
