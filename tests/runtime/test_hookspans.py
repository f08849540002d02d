"""runtime/hookspans.py: the few ranges of bt's native memory hooks."""
import random

from runtime.hookspans import MAX_SPANS, MIN_GAP, covers, spans

P = 0x1000


def test_no_pages_no_ranges():
    assert spans([]) == []


def test_adjacent_pages_share_one_range():
    assert spans([3 * P, P, 2 * P]) == [(P, 3 * P)]


def test_a_page_without_code_between_splits():
    # a demo's data page between its code pages stays out of the hooks' ranges
    assert spans([5 * P, P, 3 * P]) == [(P, P), (3 * P, 3 * P), (5 * P, 5 * P)]


def test_a_gap_of_min_gap_bytes_splits():
    a, b = 0x1000000, 0x1000000 + P + MIN_GAP          # MIN_GAP bytes without a page between
    assert spans([a, b]) == [(a, a), (b, b)]
    assert spans([a, b - P]) == [(a, b - P)]           # one page short: one range


def test_linux_like_layout_leaves_the_data_out():
    text = [0x1000000 + i * P for i in range(0x900)]          # .text
    init = [0x1d86000 + i * P for i in range(0x50)]          # .init.text, 4.4 MiB further
    got = spans(text + init)
    assert got == [(text[0], text[-1]), (init[0], init[-1])]
    assert not covers(got, 0x1a00000)                        # .data


def test_at_most_max_spans_cut_at_the_largest_gaps():
    pages = [i * 8 * MIN_GAP for i in range(10)]             # 10 islands far apart
    pages[3] += 3 * MIN_GAP                                  # gaps 2 and 3 made unequal
    got = spans(pages)
    assert len(got) == MAX_SPANS
    assert all(covers(got, p) for p in pages)


def test_random_sets_are_covered_in_order_without_overlap():
    rng = random.Random(17)
    for _ in range(200):
        pages = [rng.randrange(0, 1 << 20) * P for _ in range(rng.randrange(1, 60))]
        got = spans(pages, limit=rng.randrange(1, 6), min_gap=rng.choice((P, MIN_GAP, 64 * P)))
        assert all(covers(got, p) for p in pages)
        assert all(lo <= hi for lo, hi in got)
        assert all(a[1] < b[0] for a, b in zip(got, got[1:]))
        assert all(lo in pages and hi in pages for lo, hi in got)   # ranges end on watched pages
