"""Strength grids (A1111's X/Y plot for LoRA weights): one image of labelled cells, drawn in place.

    >>> columns = Axis("style", (0.0, 0.5, 1.0))   # a stacked LoRA's strengths
    >>> rows = Axis(SEED, (1, 2))                  # or a second LoRA's strengths
    >>> result = strength_grid(stack, lambda seed: draw(seed), columns, rows, seed=1)
    >>> result.image.save("grid.png")

Each cell changes strengths with `LoraStack.set_strength` only: nothing is loaded from disk. While the grid
runs the stack recomputes every changed layer from its pristine weights (`exact`), so a cell is the same
image as one drawn on a fresh stack at that strength and seed, whatever cell came before; afterwards the
stack's own strengths are put back the same way. Pillow is imported when the grid is assembled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sdlora.errors import ConfigError, Interrupted
from sdlora.progress import ProgressCallback, report
from sdlora.strength import Strength

SEED = "seed"  # the axis name for seeds
MAX_CELLS = 64  # a grid is for choosing a weight; more cells are a batch job


@dataclass(frozen=True)
class Axis:
    """One side of the grid: `name` is a stacked LoRA (values are its overall strengths) or SEED."""

    name: str
    values: tuple = ()

    @property
    def is_seed(self) -> bool:
        return self.name == SEED

    def label(self, value) -> str:
        return f"seed: {value}" if self.is_seed else f"{self.name}: {value:g}"  # A1111's "Seed: 3" labels


@dataclass
class GridResult:
    """The assembled image, the cells ([row][column] PIL images) and the axes they were drawn on."""

    image: Any
    cells: list[list[Any]]
    columns: Axis
    rows: Axis
    seeds: list[list[int]] = field(default_factory=list)  # [row][column] seed of each cell
    boxes: list[list[tuple[int, int]]] = field(default_factory=list)  # [row][column] top-left corner in image

    def describe(self) -> str:
        """One line for the parameters text: what the columns and rows vary."""
        return (f"Grid: columns {_axis_text(self.columns)}; rows {_axis_text(self.rows)}")


def parse_values(text: str, what: str, whole: bool = False) -> tuple:
    """'0, 0.5, 1' -> (0.0, 0.5, 1.0) (ints for seeds); ConfigError naming `what` for a bad or empty list."""
    parts = [p.strip() for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{what}: give a comma-separated list of values, e.g. 0, 0.5, 1")
    try:
        return tuple(int(p) if whole else float(p) for p in parts)
    except ValueError:
        kind = "whole numbers" if whole else "numbers"
        raise ConfigError(f"{what}: {text!r} is not a list of {kind}") from None


def strength_grid(stack, draw: Callable[[int], Any], columns: Axis, rows: Axis, seed: int = 0,  # noqa: PLR0913
                  *, on_progress: ProgressCallback | None = None,
                  should_stop: Callable[[], bool] | None = None) -> GridResult:
    """Draw every cell with `draw(seed)` after setting the stack's strengths in place, then assemble.

    Args:
        stack: the LoraStack holding every LoRA the axes name (its other LoRAs keep their strengths).
        draw: draws one image at `seed` with the stack as it is now.
        columns, rows: the axes; a LoRA axis keeps that LoRA's te/unet/block settings and moves its overall
            strength; cells of no seed axis use `seed`.
        should_stop: asked before each cell; True raises Interrupted (the stack is put back first).

    Raises:
        ConfigError: an axis names a LoRA not in the stack, both axes are the same, or too many cells.
    """
    _check_axes(stack, columns, rows)
    saved = {e.name: e.strength for e in stack.entries if e.name in (columns.name, rows.name)}
    exact, stack.exact = stack.exact, True  # every cell recomputed from W0: independent of the cell before
    cells: list[list[Any]] = [[None] * len(columns.values) for _ in rows.values]
    seeds: list[list[int]] = [[seed] * len(columns.values) for _ in rows.values]
    order = _cell_order(columns, rows)
    current: dict[str, Any] = {}
    try:
        for done, (i, j) in enumerate(order):
            if should_stop is not None and should_stop():
                raise Interrupted(f"grid stopped after {done} of {len(order)} cells")
            wanted = ((columns, columns.values[j]), (rows, rows.values[i]))
            seeds[i][j] = _set_cell(stack, saved, wanted, current, seed)
            cells[i][j] = draw(seeds[i][j])
            report(on_progress, done + 1, len(order), f"{columns.label(columns.values[j])}, "
                                                      f"{rows.label(rows.values[i])}")
    finally:
        with stack.batch():
            for name, strength in saved.items():
                stack.set_strength(name, strength)
        stack.exact = exact
    image, boxes = assemble(cells, [columns.label(v) for v in columns.values],
                            [rows.label(v) for v in rows.values])
    return GridResult(image, cells, columns, rows, seeds, boxes)


def _check_axes(stack, columns: Axis, rows: Axis) -> None:
    names = {e.name for e in stack.entries}
    for axis in (columns, rows):
        if not axis.values:
            raise ConfigError(f"grid axis {axis.name!r} has no values")
        if not axis.is_seed and axis.name not in names:
            have = ", ".join(sorted(names)) or "none"
            raise ConfigError(f"grid axis {axis.name!r}: no LoRA of that name in the stack (stacked: {have}); "
                              "add it to the stack first")
    if columns.name == rows.name:
        raise ConfigError(f"both grid axes are {columns.name!r}; vary a LoRA against seeds or another LoRA")
    if len(columns.values) * len(rows.values) > MAX_CELLS:
        raise ConfigError(f"a grid of {len(columns.values)}x{len(rows.values)} cells is too large "
                          f"(at most {MAX_CELLS}); use fewer values")


def _cell_order(columns: Axis, rows: Axis) -> list[tuple[int, int]]:
    """(row, column) pairs with a LoRA axis in the outer loop when the other is seeds: its strength then
    changes once per value instead of once per cell (each change recomputes that LoRA's layers)."""
    pairs = [(i, j) for i in range(len(rows.values)) for j in range(len(columns.values))]
    if rows.is_seed:
        pairs.sort(key=lambda p: (p[1], p[0]))
    return pairs


def _set_cell(stack, saved: dict[str, Strength], pairs, current: dict[str, Any], seed: int) -> int:
    """Set the strengths a cell asks for where they differ from the last cell's (one batch: each layer
    recomputed once); return the cell's seed."""
    with stack.batch():
        for axis, value in pairs:
            if axis.is_seed:
                seed = int(value)
            elif current.get(axis.name) != value:
                stack.set_strength(axis.name, saved[axis.name].with_overall(value))
                current[axis.name] = value
    return seed


def assemble(cells: Sequence[Sequence[Any]], column_labels: Sequence[str], row_labels: Sequence[str],
             pad: int = 4):
    """(one RGB image: a label row on top, a label column on the left, the cells in a table;
    [row][column] top-left corner of each cell in it)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    height = max(c.height for row in cells for c in row)
    # a column is as wide as its widest cell or label, so labels never overlap (small models draw 32 px cells)
    width = max([c.width for row in cells for c in row]
                + [_text_size(measure, t, font)[0] + pad for t in column_labels])
    text_h = max(_text_size(measure, t, font)[1] for t in [*column_labels, *row_labels]) + 2 * pad
    left = max(_text_size(measure, t, font)[0] for t in row_labels) + 2 * pad
    top = text_h
    sheet = Image.new("RGB", (left + len(column_labels) * (width + pad), top + len(row_labels) * (height + pad)),
                      "white")
    pen = ImageDraw.Draw(sheet)
    for j, label in enumerate(column_labels):
        pen.text((left + j * (width + pad) + pad, pad), label, fill="black", font=font)
    boxes = []
    for i, (label, row) in enumerate(zip(row_labels, cells, strict=True)):
        y = top + i * (height + pad)
        pen.text((pad, y + max(0, (height - text_h) // 2) + pad), label, fill="black", font=font)
        boxes.append([(left + j * (width + pad), y) for j in range(len(row))])
        for (x, _), cell in zip(boxes[-1], row, strict=True):
            sheet.paste(cell.convert("RGB"), (x, y))
    return sheet, boxes


def _text_size(draw, text: str, font) -> tuple[int, int]:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0], box[3] - box[1]


def _axis_text(axis: Axis) -> str:
    values = ", ".join(str(v) if axis.is_seed else f"{v:g}" for v in axis.values)
    return f"{axis.name} [{values}]"
