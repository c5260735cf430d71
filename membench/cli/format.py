"""Shared rich helpers for the CLI (no torch); byte units are membench.units."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


@dataclass
class Column:
    header: str
    justify: str = "left"
    cells: list = field(default_factory=list)


class Table:
    """A table whose headers and cells break only between words, at any width (80 columns, a pipe).

    rich squeezes a column below its longest word when a table is too wide, then folds words mid-way
    ("autocast_adapter_dty" / "pe=True"). Here every column gets at least its longest word (its whole
    text in a `whole` column: sizes, timestamps), and the rest of the width goes to the columns whose
    text is longer. When even that is wider than the console, the columns are split over several
    tables that each repeat the `keys` columns (what names a row: model, method, run id).
    A column named in `constant` whose value is the same on every row (of two or more) is said once,
    in the title ("· seq 512"), instead.

    Rows, sections and rich Table options (caption, show_header, box, ...) are as for rich's Table;
    `columns[i].cells` are the cells as given."""

    def __init__(self, title: str | None = None, columns: Iterable[tuple[str, str]] = (), *,
                 keys: Iterable[str] = (), whole: Iterable[str] = (), constant: Iterable[str] = (),
                 **table_options):
        self.title = title
        self.options = table_options
        self.columns: list[Column] = []
        self.keys: set[str] = set()
        self.whole: set[str] = set()
        self.constant = set(constant)
        self.row_count = 0
        self.section_ends: set[int] = set()  # rows a section line follows
        self._overheads: dict[int, int] = {}
        keys, whole = set(keys), set(whole)
        for header, justify in columns:
            self.add_column(header, justify, key=header in keys, whole=header in whole)

    def add_column(self, header: str, justify: str = "left", *, key: bool = False, whole: bool = False) -> None:
        self.columns.append(Column(header, justify, [""] * self.row_count))
        if key:
            self.keys.add(header)
        if key or whole:
            self.whole.add(header)

    def add_row(self, *cells) -> None:
        for column, cell in zip(self.columns, list(cells) + [""] * (len(self.columns) - len(cells)), strict=True):
            column.cells.append("" if cell is None else cell)
        self.row_count += 1

    def add_section(self) -> None:
        if self.row_count:
            self.section_ends.add(self.row_count - 1)

    def __rich_console__(self, console, options):
        shown, title = self._shown()
        spans = {i: self._span(console, options, i) for i in shown}
        groups = self._groups(shown, {i: lo for i, (lo, _) in spans.items()}, options.max_width, console, options)
        for n, group in enumerate(groups):
            room = options.max_width - self._overhead(len(group), console, options)
            widths = _share([spans[i][0] for i in group], [spans[i][1] for i in group], room)
            yield self._rich_table(group, widths, title=title if n == 0 else None)
        caption = self.options.get("caption")
        if caption:  # the console's width, not the (last) table's: a narrow table would stack it word by word
            yield console.render_str(caption, style="table.caption") if isinstance(caption, str) else caption

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        shown, _ = self._shown()
        spans = [self._span(console, options, i) for i in shown]
        extra = self._overhead(len(spans), console, options)
        return Measurement(sum(lo for lo, _ in spans) + extra, sum(hi for _, hi in spans) + extra)

    def _shown(self) -> tuple[list[int], str | None]:
        """The columns drawn, and the title with the `constant` columns' one value each."""
        shown, said = [], []
        for i, column in enumerate(self.columns):
            values = {str(cell) for cell in column.cells}
            if column.header in self.constant and self.row_count > 1 and len(values) == 1:
                said.append(f"{column.header} {values.pop()}")
            else:
                shown.append(i)
        return shown, " · ".join(([self.title] if self.title else []) + said) or None

    def _span(self, console, options, index: int) -> tuple[int, int]:
        """(narrowest, widest) a column's text can be without breaking a word (or a whole cell)."""
        from rich.measure import Measurement

        column = self.columns[index]
        lo, hi = Measurement.get(console, options, column.header) if self.options.get("show_header", True) else (1, 1)
        for cell in column.cells:
            c_lo, c_hi = Measurement.get(console, options, cell)
            lo, hi = max(lo, c_hi if column.header in self.whole else c_lo), max(hi, c_hi)
        return max(lo, 1), max(hi, lo, 1)

    def _groups(self, shown: list[int], narrowest: dict[int, int], width: int, console, options) -> list[list[int]]:
        """Column indices per table: all in one where they fit at their narrowest, else keys + what fits."""
        keys = [i for i in shown if self.columns[i].header in self.keys]
        groups, current = [], list(keys)

        def fits(cols: list[int]) -> bool:
            return sum(narrowest[i] for i in cols) + self._overhead(len(cols), console, options) <= width

        for i in shown:
            if i in keys:
                continue
            if len(current) > len(keys) and not fits(current + [i]):
                groups.append(current)
                current = list(keys)
            current = sorted(current + [i])
        groups.append(current)
        return groups

    def _overhead(self, n: int, console, options) -> int:
        """Borders and padding of a table of `n` columns (as rich draws it with these options)."""
        from rich.measure import Measurement

        if n not in self._overheads:
            probe = self._rich_table([], [1] * n, title=None)
            self._overheads[n] = Measurement.get(console, options.update_width(10_000), probe).maximum - n
        return self._overheads[n]

    def _rich_table(self, group: list[int], widths: list[int], *, title: str | None):
        """The rich Table of the columns in `group` at `widths` (no group: an empty probe of len(widths))."""
        from rich.table import Table as RichTable

        options = {k: v for k, v in self.options.items() if k != "caption"}
        t = RichTable(title=title, **options)
        for i, width in enumerate(widths):
            column = self.columns[group[i]] if group else Column("")
            # fold: only a word wider than the whole console is ever broken
            t.add_column(column.header, justify=column.justify, width=width, overflow="fold")
        for row in range(self.row_count if group else 0):
            t.add_row(*(self.columns[i].cells[row] for i in group), end_section=row in self.section_ends)
        return t


def _share(narrowest: list[int], widest: list[int], room: int) -> list[int]:
    """Widths from the narrowest up: the room left is shared evenly, no column past its widest."""
    widths = list(narrowest)
    room -= sum(widths)
    while room > 0:
        hungry = [i for i, w in enumerate(widths) if w < widest[i]]
        if not hungry:
            break
        share = max(room // len(hungry), 1)
        for i in hungry:
            give = min(share, widest[i] - widths[i], room)
            widths[i] += give
            room -= give
    return widths


def table(title: str | None = None, columns=(), *, keep: Iterable[str] = (), whole: Iterable[str] = (),
          constant: Iterable[str] = (), **kwargs) -> Table:
    """A Table (above). `columns`: (header, justify) pairs. `keep`: the headers of the columns whose values
    identify a row (model, method): never wrapped, and repeated when the table is split. `whole`: headers
    of columns whose values are one unit each (a size, a time): never wrapped. `constant`: headers of the
    columns said once in the title when every row has the same value."""
    return Table(title, columns, keys=keep, whole=whole, constant=constant, **kwargs)


def warn(message: str) -> None:
    """One line on stderr for an input that is accepted but does nothing (the command goes on)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def status(message: str):
    """A spinner on stderr while work runs; yields a function that updates its text."""
    with err_console.status(message) as st:
        yield lambda msg: st.update(f"{message}: {msg}")


def live_progress() -> bool:
    """Whether progress can redraw one line in place (stderr is a terminal). Elsewhere (a pipe, a log
    file, CI) a live display shows nothing until it ends, so progress is one plain line per step."""
    return err_console.is_terminal


def progress_line(message: str) -> None:
    """One line on stderr, written at once: never wrapped, no markup read from names in it."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(message: str):
    """What a long command is doing, on stderr; yields a function that tells it.

    On a terminal, a spinner whose text follows. Elsewhere (a pipe, a log, CI) plain timestamped
    lines, from 5 s on (a short command, or one refused at once, prints only its result or its one
    error line): one per message, except that messages of one kind (the text before the last ':',
    e.g. "forward: layer i/N") come at most every 10 s, and 30 s without a line print a "still ..."
    line (a long build says nothing itself)."""
    if err_console.is_terminal:
        with status(message) as say:
            yield say
        return
    lines = _PlainLines(message)
    try:
        yield lines.say
    finally:
        lines.close()


class _PlainLines:
    START_S, REPEAT_S, QUIET_S = 5.0, 10.0, 30.0

    def __init__(self, message: str):
        self.message, self.t0 = message, time.perf_counter()
        self.current, self.kind, self.printed_at = "", None, None
        self.lock, self.done = threading.Lock(), threading.Event()
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()

    def say(self, msg: str) -> None:
        with self.lock:
            self.current = msg
            now = time.perf_counter()
            if now - self.t0 < self.START_S:
                return
            kind = msg.rsplit(":", 1)[0]
            if kind == self.kind and now - self.printed_at < self.REPEAT_S:
                return
            self.kind = kind
            self._print(msg)

    def _print(self, msg: str) -> None:
        self.printed_at = time.perf_counter()
        print(f"[{self.printed_at - self.t0:7.1f}s] {self.message}: {msg}", file=sys.stderr, flush=True)

    def _tick(self) -> None:
        """From START_S on: the message of the moment once, then a 'still ...' line after QUIET_S of silence."""
        if self.done.wait(self.START_S):
            return
        with self.lock:
            if self.printed_at is None and self.current:  # (nothing said yet: the first say() prints)
                self.kind = self.current.rsplit(":", 1)[0]
                self._print(self.current)
        while not self.done.wait(self.QUIET_S / 6):
            with self.lock:
                if self.printed_at is not None and time.perf_counter() - self.printed_at >= self.QUIET_S:
                    self._print(f"still {self.current}")

    def close(self) -> None:
        self.done.set()
        self.ticker.join()
