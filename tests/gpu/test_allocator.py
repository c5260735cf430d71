"""The caching-allocator model against hand-traced sequences (expected figures worked out by hand)."""

from __future__ import annotations

import pytest

from membench.errors import UserError
from membench.gpu.allocator import (
    AllocatorConfig,
    CachingAllocatorModel,
    OutOfMemory,
    round_size,
    segment_size,
)

KiB, MiB = 1 << 10, 1 << 20


def test_round_size_and_segment_size():
    assert round_size(1) == 512 and round_size(512) == 512 and round_size(513) == 1024
    assert round_size(1_000_000) == 1_000_448  # 1954 * 512
    # power-of-2 divisions: 1.17 MiB lies between 1 and 2 MiB, cut in 4 steps of 256 KiB -> 1.25 MiB
    assert round_size(1_228_800, divisions=4) == 1_310_720
    assert round_size(2 * MiB, divisions=4) == 2 * MiB  # a power of 2 stays
    assert round_size(1000, divisions=4) == 1024  # below 512 * divisions: plain 512 rounding
    assert segment_size(512) == 2 * MiB and segment_size(1 * MiB) == 2 * MiB
    assert segment_size(1 * MiB + 512) == 20 * MiB and segment_size(10 * MiB - 512) == 20 * MiB
    assert segment_size(10 * MiB) == 10 * MiB and segment_size(10 * MiB + 512) == 12 * MiB


def test_small_pool_packs_one_segment_then_opens_another():
    a = CachingAllocatorModel()
    h1 = a.malloc(1)  # 512 B block from a new 2 MiB segment
    assert (a.allocated, a.reserved) == (512, 2 * MiB)
    a.malloc(1000)  # 1024 B, split from the same segment's rest
    assert (a.allocated, a.reserved) == (1536, 2 * MiB)
    a.malloc(2 * MiB - 1536)  # 2,095,616 B > 1 MiB: large pool, a 20 MiB segment
    assert a.reserved == 22 * MiB
    a.free(h1)
    a.malloc(400)  # reuses the freed 512 B block (best fit)
    assert a.reserved == 22 * MiB and a.num_segments == 2


def test_large_block_is_split_only_when_more_than_1_mib_remains():
    a = CachingAllocatorModel()
    a.malloc(3 * MiB)  # new 20 MiB segment, split: 3 MiB used, 17 MiB free
    assert (a.allocated, a.reserved) == (3 * MiB, 20 * MiB)
    a.malloc(16 * MiB + 512 * KiB)  # best fit is the 17 MiB rest: only 512 KiB would remain -> no split
    assert a.allocated == 20 * MiB  # charged the whole 17 MiB block, not the 16.5 MiB asked
    assert a.reserved == 20 * MiB
    a.malloc(15 * MiB)  # nothing free: >= 10 MiB gets its own 16 MiB segment; the 1 MiB rest is not split off
    assert (a.allocated, a.reserved) == (36 * MiB, 36 * MiB)


def test_free_merges_neighbours_and_the_merged_block_is_reused():
    a = CachingAllocatorModel()
    h1 = a.malloc(4 * MiB)
    h2 = a.malloc(4 * MiB)
    h3 = a.malloc(4 * MiB)  # one 20 MiB segment: 4 + 4 + 4 used, 8 MiB free at its end
    assert a.reserved == 20 * MiB
    a.free(h1)
    a.free(h2)  # merges with the freed first block: 8 MiB free at the start
    a.malloc(6 * MiB)  # best fit: the 8 MiB merged block (same size as the tail; lower address), split
    assert (a.allocated, a.reserved) == (10 * MiB, 20 * MiB)
    a.free(h3)  # merges with the 2 MiB rest before it and the 8 MiB tail after it: 14 MiB free
    a.malloc(12 * MiB)  # a 12 MiB request is large (>= 10 MiB) but a cached block fits: no new segment
    assert (a.allocated, a.reserved) == (18 * MiB, 20 * MiB)
    h = a.malloc(7 * MiB)  # no 7 MiB block is free (2 MiB is): a new 20 MiB segment, split
    a.free(h)
    a.malloc(19 * MiB + 512 * KiB)  # the merged 20 MiB block fits with 512 KiB left: charged all 20 MiB
    assert (a.allocated, a.reserved) == (38 * MiB, 40 * MiB)


def test_a_segment_that_cannot_be_reused():
    a = CachingAllocatorModel()
    h = a.malloc(5 * MiB)
    a.free(h)  # 20 MiB cached in the large pool, nothing allocated
    assert (a.allocated, a.reserved) == (0, 20 * MiB)
    a.malloc(64 * KiB)  # a small request never takes a large-pool block: a new 2 MiB segment
    assert a.reserved == 22 * MiB
    a.malloc(30 * MiB)  # bigger than any cached block: a new 30 MiB segment
    assert a.reserved == 52 * MiB
    assert (a.peak_allocated, a.peak_reserved) == (64 * KiB + 30 * MiB, 52 * MiB)


def test_peaks_reset_to_current():
    a = CachingAllocatorModel()
    h = a.malloc(12 * MiB)
    a.free(h)
    a.reset_peaks()
    assert (a.peak_allocated, a.peak_reserved) == (0, 12 * MiB)
    a.malloc(1 * KiB)
    assert a.peak_allocated == 1 * KiB


def test_zero_bytes_take_no_block():
    a = CachingAllocatorModel()
    assert a.malloc(0) is None
    a.free(None)
    assert (a.allocated, a.reserved) == (0, 0)


def test_expandable_segments_split_at_512_and_grow_in_pages():
    a = CachingAllocatorModel(AllocatorConfig(expandable_segments=True))
    h1 = a.malloc(3 * MiB)  # large pool maps one 20 MiB page
    a.malloc(16 * MiB + 512 * KiB)  # fits the 17 MiB rest and splits it (rest 512 KiB >= 512 B)
    assert (a.allocated, a.reserved) == (19 * MiB + 512 * KiB, 20 * MiB)
    a.malloc(2 * MiB)  # 512 KiB free at the end + one more 20 MiB page
    assert (a.allocated, a.reserved) == (21 * MiB + 512 * KiB, 40 * MiB)
    a.free(h1)
    a.malloc(3 * MiB)  # the freed 3 MiB block at the start fits exactly
    assert a.reserved == 40 * MiB
    a.malloc(100)  # small pool: its own segment, one 2 MiB page
    assert a.reserved == 42 * MiB


def test_max_split_size_keeps_oversize_blocks_whole():
    a = CachingAllocatorModel(AllocatorConfig(max_split_size=64 * MiB))
    h = a.malloc(100 * MiB)
    a.free(h)
    a.malloc(30 * MiB)  # a small request (< 64 MiB) never takes the oversize 100 MiB block
    assert a.reserved == 130 * MiB
    a.malloc(90 * MiB)  # a large request may take it if it is less than 20 MiB bigger: not split
    assert a.allocated == 130 * MiB and a.reserved == 130 * MiB


def test_capacity_releases_cached_segments_then_runs_out():
    a = CachingAllocatorModel(capacity=50 * MiB)
    h = a.malloc(30 * MiB)
    a.free(h)  # 30 MiB cached
    a.malloc(40 * MiB)  # 30 + 40 > 50: the free 30 MiB segment is released, then it fits
    assert (a.allocated, a.reserved) == (40 * MiB, 40 * MiB)
    with pytest.raises(OutOfMemory) as exc:
        a.malloc(12 * MiB)
    assert exc.value.requested == 12 * MiB and exc.value.capacity == 50 * MiB


def test_empty_cache():
    a = CachingAllocatorModel()
    h1, h2 = a.malloc(4 * MiB), a.malloc(12 * MiB)
    a.free(h2)
    a.empty_cache()  # the 12 MiB segment is free: released; the 20 MiB one holds h1: kept
    assert a.reserved == 20 * MiB
    a.free(h1)
    a.empty_cache()
    assert a.reserved == 0


def test_alloc_conf_parsing():
    assert AllocatorConfig.parse("") == AllocatorConfig()
    c = AllocatorConfig.parse("expandable_segments:True, max_split_size_mb:128,roundup_power2_divisions:4")
    assert c == AllocatorConfig(True, 128 * MiB, 4)
    assert AllocatorConfig.parse(c.to_string()) == c
    for bad, words in [("expandable_segments", "KEY:VALUE"), ("expandable_segments:yes", "True or False"),
                       ("max_split_size_mb:abc", "integer"), ("roundup_power2_divisions:3", "power of 2"),
                       ("garbage_collection_threshold:0.6", "not modelled")]:
        with pytest.raises(UserError, match=words):
            AllocatorConfig.parse(bad)


def test_the_gpu_package_but_the_emulation_imports_no_torch():
    """The allocator model, the replay, the SDPA rules, the GPU table and targets are plain Python."""
    import subprocess
    import sys

    code = ("import sys, membench.gpu.allocator, membench.gpu.predict, membench.gpu.sdpa, membench.gpu.specs, "
            "membench.backends, membench.fit, membench.cli.fit; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
