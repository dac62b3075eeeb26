"""The two things every tool prints with: one percentile and one table renderer.

:func:`percentile` is the nearest-rank percentile, the one definition behind every
figure the tools print (the simulator, the demo, the benchmarks, the chaos report):
the smallest value with at least a fraction ``q`` of the values at or below it.  It is
always one of the values — no interpolation — so a p99 of 25.2 s means a request
really took 25.2 s.

:func:`table_lines` lays out rows of cells in aligned columns: the ``health`` and
``models`` commands' tables, the demo's and the simulator's comparisons, the benchmark
and chaos reports.  The caller formats each cell (digits, units); the renderer only
pads and joins, so a column stays aligned however wide its cells grow.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

__all__ = ["percentile", "table_lines"]


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank ``q`` percentile of ``values`` (``nan`` when there are none).

    The smallest value ``v`` of ``values`` such that at least ``q * n`` of the ``n``
    values are at or below ``v``: the value of rank ``ceil(q * n)`` in ascending order
    (rank 1 when ``q`` is 0).  ``values`` need not be sorted; an ascending list is
    sorted in linear time.

    Example::

        percentile([0.3, 0.1, 0.2, 9.0], 0.5)   # 0.2
        percentile([0.3, 0.1, 0.2, 9.0], 0.99)  # 9.0

    Raises:
        ValueError: ``q`` is not in ``[0, 1]``.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a percentile's q must be in [0, 1], got {q!r}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def table_lines(
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    widths: Sequence[int] = (),
    sep: str = "  ",
    indent: str = "",
    rule: bool = False,
    strip: bool = True,
) -> list[str]:
    """``rows`` of cells as text lines, each column padded to its widest cell.

    Args:
        rows: the cells, row by row (the first is the header, if there is one); every
            row has the same number of cells.
        right: the columns (0-based) aligned right, such as numbers; the others align
            left.
        widths: a minimum width for each of the first ``len(widths)`` columns, for a
            report whose columns keep their width whatever the figures.
        sep: what stands between two columns.
        indent: what starts every line.
        rule: add a line of ``-`` under the first row, as wide as the table.
        strip: drop the spaces at the end of each line; ``False`` keeps every line
            at the table's full width.

    Example::

        table_lines([["NAME", "P50"], ["alpha", "80ms"]], right={1})
        # ['NAME    P50', 'alpha  80ms']

    Raises:
        ValueError: the rows do not all have the same number of cells.
    """
    if not rows:
        return []
    count = len(rows[0])
    if any(len(row) != count for row in rows):
        raise ValueError(f"every row of a table needs {count} cells, as its first has")
    sizes = [max(len(row[i]) for row in rows) for i in range(count)]
    for i, least in enumerate(widths[:count]):
        sizes[i] = max(sizes[i], least)
    lines = []
    for row in rows:
        cells = [
            cell.rjust(size) if i in right else cell.ljust(size)
            for i, (cell, size) in enumerate(zip(row, sizes, strict=True))
        ]
        line = indent + sep.join(cells)
        lines.append(line.rstrip() if strip else line)
    if rule:
        lines.insert(1, indent + "-" * (sum(sizes) + len(sep) * (count - 1)))
    return lines
