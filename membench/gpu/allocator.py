"""A model of PyTorch's CUDA caching allocator, to replay a step's allocations (no torch).

The rules follow c10/cuda/CUDACachingAllocator.cpp (shared/cuda-notes.md section 3):

    malloc(n)  size = n rounded up to 512 B (or to a power-of-2 division, if configured)
               pool = small if size <= 1 MiB else large
               block = best fit among the pool's free blocks: smallest size, then lowest address
                       (with max_split_size: never an oversize block for a small request, nor
                       one 20 MiB or more above a large request)
               none fits: a new segment (cudaMalloc) of
                   small pool: 2 MiB  |  large, size < 10 MiB: 20 MiB  |  else: size rounded up to 2 MiB
               split the block when the rest is worth keeping:
                   small pool: rest >= 512 B  |  large pool: rest > 1 MiB (and size < max_split_size)
               otherwise the caller is charged the whole block
    free(b)    the block goes back to its pool, merged with free neighbours of its segment;
               segments are never returned to the driver (only by empty_cache, or to retry
               a cudaMalloc that would not fit)

    stats      allocated = sum of allocated *block* sizes (not the requests);
               reserved  = sum of segment sizes;  peaks of both since reset_peaks()

With `expandable_segments:True` each pool is one growing segment mapped in pages
(small: 2 MiB, large: 20 MiB): a request that fits no free block extends the end of
the segment (reusing a free block that ends there), and blocks split whenever the
rest is >= 512 B, so allocated is the sum of 512-rounded sizes.

The model knows nothing of tensors, models or methods: sizes in, statistics out.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..errors import UserError

MIN_BLOCK = 512  # kMinBlockSize
SMALL_SIZE = 1 << 20  # kSmallSize: requests up to 1 MiB use the small pool
SMALL_BUFFER = 2 << 20  # kSmallBuffer: small-pool segments
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc
LARGE_BUFFER = 20 << 20  # kLargeBuffer: segments for large requests below 10 MiB
ROUND_LARGE = 2 << 20  # kRoundLarge
MB = 1 << 20


class OutOfMemory(Exception):
    """A cudaMalloc the model cannot fit under its capacity, even after releasing cached segments."""

    def __init__(self, requested: int, reserved: int, capacity: int):
        self.requested, self.reserved, self.capacity = requested, reserved, capacity
        super().__init__(f"cannot reserve {requested:,} B more: {reserved:,} B reserved of {capacity:,} B")


@dataclass(frozen=True)
class AllocatorConfig:
    """The options of PYTORCH_CUDA_ALLOC_CONF that change memory figures."""

    expandable_segments: bool = False
    max_split_size: int | None = None  # bytes; None = unlimited (the default)
    roundup_power2_divisions: int = 0

    KEYS = ("expandable_segments", "max_split_size_mb", "roundup_power2_divisions")

    @classmethod
    def parse(cls, text: str | None) -> AllocatorConfig:
        """'expandable_segments:True,max_split_size_mb:128' -> AllocatorConfig (UserError when bad)."""
        values: dict = {}
        for item in filter(None, (s.strip() for s in (text or "").split(","))):
            key, sep, raw = (s.strip() for s in item.partition(":"))
            if not sep or not raw:
                raise UserError(f"--alloc-conf {item!r}: expected KEY:VALUE, e.g. expandable_segments:True")
            if key == "expandable_segments":
                if raw not in ("True", "False", "true", "false"):
                    raise UserError(f"--alloc-conf expandable_segments:{raw}: expected True or False")
                values["expandable_segments"] = raw in ("True", "true")
            elif key == "max_split_size_mb":
                if not raw.isdigit() or int(raw) <= 20:
                    raise UserError(f"--alloc-conf max_split_size_mb:{raw}: expected an integer above 20 (MiB)")
                values["max_split_size"] = int(raw) * MB
            elif key == "roundup_power2_divisions":
                if not raw.isdigit() or int(raw) & (int(raw) - 1):
                    raise UserError(f"--alloc-conf roundup_power2_divisions:{raw}: expected a power of 2")
                values["roundup_power2_divisions"] = int(raw)
            else:
                raise UserError(f"--alloc-conf {key}: not modelled; allowed keys: {', '.join(cls.KEYS)}")
        return cls(**values)

    def to_string(self) -> str:
        parts = []
        if self.expandable_segments:
            parts.append("expandable_segments:True")
        if self.max_split_size is not None:
            parts.append(f"max_split_size_mb:{self.max_split_size // MB}")
        if self.roundup_power2_divisions:
            parts.append(f"roundup_power2_divisions:{self.roundup_power2_divisions}")
        return ",".join(parts)


def round_size(n: int, divisions: int = 0) -> int:
    """The size a request is served with (CUDACachingAllocator `round_size`)."""
    if n < MIN_BLOCK:
        return MIN_BLOCK
    if divisions > 1 and n > MIN_BLOCK * divisions:
        if n & (n - 1) == 0:
            return n
        floor = 1 << (n.bit_length() - 1)
        step = floor >> (divisions.bit_length() - 1)
        if step == 0:
            return floor << 1
        base = n & ~(step - 1)
        return n if base == n else base + step
    return MIN_BLOCK * ((n + MIN_BLOCK - 1) // MIN_BLOCK)


def segment_size(size: int) -> int:
    """How much cudaMalloc reserves for a request that fits no cached block."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return ROUND_LARGE * ((size + ROUND_LARGE - 1) // ROUND_LARGE)


class _Block:
    __slots__ = ("addr", "size", "allocated", "small", "prev", "next", "segment")

    def __init__(self, addr, size, small, segment):
        self.addr, self.size, self.small, self.segment = addr, size, small, segment
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None


class CachingAllocatorModel:
    """Replays malloc/free and keeps PyTorch's allocator statistics.

    `capacity`: bytes the allocator may reserve (GPU memory minus the context);
    None = unlimited. When a new segment would not fit, cached free segments are
    released and the request retried, as PyTorch does; then OutOfMemory.
    """

    def __init__(self, config: AllocatorConfig | None = None, capacity: int | None = None):
        self.config = config or AllocatorConfig()
        self.capacity = capacity
        self._free = {True: [], False: []}  # small? -> sorted [(size, addr, block)] of free blocks
        self._blocks: dict[int, _Block] = {}  # handle -> allocated block
        self._next_handle = 1
        self._next_addr = 0
        self._tails: dict[bool, _Block | None] = {True: None, False: None}  # expandable: last block per pool
        self._mapped = {True: 0, False: 0}  # expandable: mapped bytes per pool
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.num_segments = 0

    # ---- public -----------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int | None:
        """Serve a request of `nbytes`; returns a handle for free(), or None for 0 bytes (no block)."""
        if nbytes <= 0:
            return None
        size = round_size(nbytes, self.config.roundup_power2_divisions)
        small = size <= SMALL_SIZE
        block = self._best_fit(size, small)
        if block is None:
            block = self._grow(size, small)
        else:
            self._unlist(block)
        if self._should_split(block, size):
            self._split(block, size)
        block.allocated = True
        handle = self._next_handle
        self._next_handle += 1
        self._blocks[handle] = block
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        return handle

    def free(self, handle: int | None) -> None:
        if handle is None:
            return
        block = self._blocks.pop(handle)
        block.allocated = False
        self.allocated -= block.size
        for nb in (block.prev, block.next):
            if nb is not None and not nb.allocated:
                block = self._merge(block, nb)
        self._list(block)

    def reset_peaks(self) -> None:
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def empty_cache(self) -> None:
        """Release every segment that holds no allocated block (torch.cuda.empty_cache)."""
        for small in (True, False):
            if self.config.expandable_segments:
                self._unmap_tail(small)
                continue
            for _size, _addr, b in list(self._free[small]):
                if b.prev is None and b.next is None:  # the whole segment is this one free block
                    self._unlist(b)
                    self.reserved -= b.size
                    self.num_segments -= 1

    # ---- blocks -----------------------------------------------------------------------------------------
    def _best_fit(self, size: int, small: bool) -> _Block | None:
        free = self._free[small]
        if self.config.expandable_segments:
            tail = self._tails[small]
            best = None
            i = bisect.bisect_left(free, (size, -1))
            for _s, _a, b in free[i:]:
                if b is not tail:
                    return b
                best = b  # the block at the segment's end: only if nothing else fits
            return best
        i = bisect.bisect_left(free, (size, -1))
        if i == len(free):
            return None
        block = free[i][2]
        limit = self.config.max_split_size
        if limit is not None:
            if size < limit <= block.size:
                return None  # no oversize block for a small request
            if size >= limit and block.size >= size + LARGE_BUFFER:
                return None  # nor one far bigger than a large request
        return block

    def _should_split(self, block: _Block, size: int) -> bool:
        rest = block.size - size
        if block.small or self.config.expandable_segments:
            return rest >= MIN_BLOCK
        limit = self.config.max_split_size
        return (limit is None or size < limit) and rest > SMALL_SIZE

    def _split(self, block: _Block, size: int) -> None:
        rest = _Block(block.addr + size, block.size - size, block.small, block.segment)
        rest.prev, rest.next = block, block.next
        if block.next is not None:
            block.next.prev = rest
        block.next = rest
        block.size = size
        if self._tails[block.small] is block:
            self._tails[block.small] = rest
        self._list(rest)

    def _merge(self, block: _Block, other: _Block) -> _Block:
        """Merge two adjacent free blocks (`other` is listed as free); returns the merged block."""
        self._unlist(other)
        first, second = (other, block) if other.addr < block.addr else (block, other)
        first.size += second.size
        first.next = second.next
        if second.next is not None:
            second.next.prev = first
        if self._tails[first.small] is second:
            self._tails[first.small] = first
        return first

    def _list(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (block.size, block.addr, block))

    def _unlist(self, block: _Block) -> None:
        free = self._free[block.small]
        i = bisect.bisect_left(free, (block.size, block.addr))
        assert free[i][2] is block
        del free[i]

    # ---- segments ---------------------------------------------------------------------------------------
    def _grow(self, size: int, small: bool) -> _Block:
        if self.config.expandable_segments:
            return self._extend(size, small)
        seg = segment_size(size)
        self._reserve(seg)
        block = _Block(self._next_addr, seg, small, self.num_segments)
        self._next_addr += seg + (1 << 40)  # segments never touch: they cannot merge
        self.num_segments += 1
        return block

    def _reserve(self, nbytes: int) -> None:
        if self.capacity is not None and self.reserved + nbytes > self.capacity:
            self.empty_cache()
            if self.reserved + nbytes > self.capacity:
                raise OutOfMemory(nbytes, self.reserved, self.capacity)
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def _extend(self, size: int, small: bool) -> _Block:
        """Expandable segments: map pages at the end of the pool's segment until `size` fits there."""
        page = SMALL_BUFFER if small else LARGE_BUFFER
        tail = self._tails[small]
        reuse = tail is not None and not tail.allocated
        have = tail.size if reuse else 0
        need = -(-(size - have) // page) * page
        self._reserve(need)
        base = (1 << 60) if not small else (1 << 59)
        if reuse:
            self._unlist(tail)
            tail.size += need
            block = tail
        else:
            block = _Block(base + self._mapped[small], need, small, -1 if small else -2)
            block.prev = tail
            if tail is not None:
                tail.next = block
            self._tails[small] = block
        self._mapped[small] += need
        return block

    def _unmap_tail(self, small: bool) -> None:
        """Expandable segments: unmap the whole free pages at the end of the pool's segment."""
        page = SMALL_BUFFER if small else LARGE_BUFFER
        tail = self._tails[small]
        if tail is None or tail.allocated:
            return
        start = tail.addr - ((1 << 59) if small else (1 << 60))
        keep = -(-start // page) * page - start  # up to the first page boundary at or after the start
        drop = tail.size - keep
        if drop <= 0:
            return
        self._unlist(tail)
        self.reserved -= drop
        self._mapped[small] -= drop
        if keep:
            tail.size = keep
            self._list(tail)
        else:
            self._tails[small] = tail.prev
            if tail.prev is not None:
                tail.prev.next = None
