/* The slot view's state and its one placement routine, shared by
 * runtime/_isolation.c (the `SlotView` type, its read hooks, `set` from
 * runtime/paging.py) and runtime/_exits.c (the native `mov cr3`, which moves
 * the hypervisor area's directory slot to the new directory and must take the
 * view along).  One definition of "the current directory's slots are now
 * these": the record the read hooks consult, and the hooks' range moved to
 * cover them when they moved (a new directory).
 *
 * Why the hooks are moved in place: Unicorn 2.1.4 has no call that changes a
 * hook's range, and a delete only marks a hook until the engine's run ends
 * (every slow-path load then walks the dead ones too: docs/benchmarks.md
 * "Moving a hook").  A memory hook's `begin`/`end` (Unicorn's struct hook,
 * offsets calibrated by runtime/quirks.py `_find_hook_range_offsets`) are read
 * at every access, so writing them moves the hook, in blocks translated
 * before the move too (tests/runtime/test_unicorn_facts.py
 * `test_fact_a_memory_hook_moved_in_place_fires_on_its_new_range_only`). */
#ifndef BT_SLOTVIEW_H
#define BT_SLOTVIEW_H

#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define SLOTVIEW_MAX_SLOTS 2
#define SLOTVIEW_TYPE_NAME "runtime._isolation.SlotView"

/* Unicorn matches a load against a hook's range by its first byte: a load
 * that starts up to 15 bytes before the slot can still cover it. */
#define SLOTVIEW_READ_EARLY 15

typedef struct {
    PyObject_HEAD
    uint8_t *ram;
    uint64_t ram_size;
    int n;
    uint64_t addr[SLOTVIEW_MAX_SLOTS];
    int size[SLOTVIEW_MAX_SLOTS];
    uint64_t ours[SLOTVIEW_MAX_SLOTS], guest[SLOTVIEW_MAX_SLOTS];
    int swapped;                    /* bit k: slot k holds the guest's value for one load */
    uint64_t hidden;                /* guest loads that met the VMM's entry */
    /* the read hooks (before, after): Unicorn handles (a handle is the hook's address) */
    int nhooks;                     /* 0 until runtime/paging.py attaches them, then 2 */
    uint8_t *hook[2];
    Py_ssize_t begin_off, end_off;  /* struct hook's begin and end */
    uint64_t lo, hi;                /* the range they cover now: [lo, hi] */
    uint64_t moves;                 /* times the hooks moved (a new directory) */
} SlotView;

/* The hooks' range for the current slots (adjacent; n > 0). */
static inline void slotview_range(const SlotView *v, uint64_t *lo, uint64_t *hi)
{
    uint64_t first = v->addr[0], last = v->addr[v->n - 1] + (uint64_t)v->size[v->n - 1];
    *lo = first > SLOTVIEW_READ_EARLY ? first - SLOTVIEW_READ_EARLY : 0;
    *hi = last - 1;
}

static inline void slotview_move_hooks(SlotView *v, uint64_t lo, uint64_t hi)
{
    for (int k = 0; k < v->nhooks; k++) {
        memcpy(v->hook[k] + v->begin_off, &lo, 8);
        memcpy(v->hook[k] + v->end_off, &hi, 8);
    }
    v->lo = lo;
    v->hi = hi;
    v->moves++;
}

/* The current directory's slots are now these (n of them, 0: paging off or
 * no slot, the hooks then stay where they are); the hooks follow a slot that
 * moved.  The caller checked every slot lies in RAM. */
static inline void slotview_place(SlotView *v, int n, const uint64_t *addr, const int *size,
                                  const uint64_t *ours, const uint64_t *guest)
{
    v->n = n;
    for (int k = 0; k < n; k++) {
        v->addr[k] = addr[k];
        v->size[k] = size[k];
        v->ours[k] = ours[k];
        v->guest[k] = guest[k];
    }
    v->swapped = 0;
    if (n == 0 || v->nhooks == 0)
        return;
    uint64_t lo, hi;
    slotview_range(v, &lo, &hi);
    if (lo != v->lo || hi != v->hi)
        slotview_move_hooks(v, lo, hi);
}

#endif
