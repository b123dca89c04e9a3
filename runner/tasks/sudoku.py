"""Sudoku puzzles, generated offline and deterministically from a seed: the puzzle family on which TRM ("Less is
More: Recursive Reasoning with Tiny Networks", arXiv 2510.04871) and HRM (arXiv 2506.21734) are measured.

* **Full grids** by randomised backtracking (each cell tries the digits in an order drawn from the seed).
* **Puzzles**: the clues of a full grid removed one at a time, in an order drawn from the seed, each removal kept
  only while the puzzle still has exactly one solution (:func:`count_solutions` stops at two), down to
  ``min_clues`` or until no clue can go. Difficulty is the number of clues left and the number of guesses the
  reference solver needs (:func:`solve` with ``stats``).
* **A baseline without search**: :func:`propagate` fills what constraint propagation alone gives (naked singles:
  a cell with one candidate; hidden singles: a digit with one place in a row, column or box), so a model can be
  compared with what needs no reasoning beyond propagation.
* **Augmentation** as TRM trains with it: :func:`augment` relabels the digits, shuffles the bands and the rows
  within each band, the stacks and the columns within each stack, and transposes; a valid puzzle stays valid and
  its unique solution maps to the new puzzle's unique solution.

A grid is a tuple of 81 ints, row by row, 0 for an empty cell and 1-9 for a digit. :class:`Sudoku` is the data
source ``data=sudoku`` built on them (train with ``objective=fill``: every cell sees the whole grid).
"""
from __future__ import annotations

import random
from typing import Optional

import torch

from . import synthetic
from ..common import whole
from ..scoring import IGNORE
from .synthetic import Examples, Task, as_examples

CELLS = 81
ALL = 0x3FE  # bits 1..9: every digit possible


def _units() -> tuple[list[list[int]], list[list[int]]]:
    rows = [[r * 9 + c for c in range(9)] for r in range(9)]
    cols = [[r * 9 + c for r in range(9)] for c in range(9)]
    boxes = [[(br + r) * 9 + bc + c for r in range(3) for c in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)]
    units = rows + cols + boxes
    peers = [sorted({p for u in units if i in u for p in u} - {i}) for i in range(CELLS)]
    return units, peers


UNITS, PEERS = _units()


def is_solution(grid, puzzle=None) -> bool:
    """Whether ``grid`` is a full, valid sudoku (and agrees with the clues of ``puzzle``)."""
    if len(grid) != CELLS or any(not 1 <= v <= 9 for v in grid):
        return False
    if any(len({grid[i] for i in u}) != 9 for u in UNITS):
        return False
    return puzzle is None or all(p == 0 or p == g for p, g in zip(puzzle, grid))


def _candidates(grid) -> Optional[list[int]]:  # for propagate
    """The candidate bitmask of every cell (a filled cell: its digit's bit); None if two clues clash."""
    cand = [ALL] * CELLS
    for i, v in enumerate(grid):
        if v:
            bit = 1 << v
            if not cand[i] & bit:
                return None
            cand[i] = bit
            for p in PEERS[i]:
                cand[p] &= ~bit
    for i, v in enumerate(grid):
        if v and cand[i] != 1 << v:
            return None
    return cand


ROW = [i // 9 for i in range(CELLS)]
COL = [i % 9 for i in range(CELLS)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(CELLS)]


def _search(grid: list[int], limit: int, order: Optional[random.Random], found: list, stats: dict) -> None:
    """Depth-first search, always on the empty cell with the fewest candidates (used digits kept as bitmasks per
    row, column and box); appends solutions to ``found`` up to ``limit``. ``order`` shuffles the digits tried
    (generation); None tries them in increasing order. A puzzle whose clues clash has none."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(grid):
        if v:
            bit = 1 << v
            if (rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]]) & bit:
                return
            rows[ROW[i]] |= bit
            cols[COL[i]] |= bit
            boxes[BOX[i]] |= bit
    empty = [i for i in range(CELLS) if grid[i] == 0]

    def go(left: int) -> None:
        if left == 0:
            found.append(tuple(grid))
            return
        best, best_free, best_n = -1, 0, 10
        for k in range(left):
            i = empty[k]
            free = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            n = bin(free).count("1")
            if n < best_n:
                best, best_free, best_n = k, free, n
                if n <= 1:
                    break
        if best_n == 0:
            return
        empty[best], empty[left - 1] = empty[left - 1], empty[best]
        i = empty[left - 1]
        digits = [d for d in range(1, 10) if best_free >> d & 1]
        if order is not None:
            order.shuffle(digits)
        if len(digits) > 1:
            stats["guesses"] = stats.get("guesses", 0) + 1
        r, c, b = ROW[i], COL[i], BOX[i]
        for d in digits:
            bit = 1 << d
            grid[i] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            go(left - 1)
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[b] &= ~bit
            grid[i] = 0
            if len(found) >= limit:
                break
        empty[best], empty[left - 1] = empty[left - 1], empty[best]

    go(len(empty))


def count_solutions(puzzle, limit: int = 2) -> int:
    """How many solutions ``puzzle`` has, counted up to ``limit``."""
    found: list = []
    _search(list(puzzle), limit, None, found, {})
    return len(found)


def solve(puzzle, stats: Optional[dict] = None) -> Optional[tuple]:
    """The first solution found (digits tried in increasing order), or None; ``stats["guesses"]``: the branching
    points the search met (cells with more than one candidate left when chosen), a measure of difficulty."""
    found: list = []
    _search(list(puzzle), 1, None, found, stats if stats is not None else {})
    return found[0] if found else None


def full_grid(rng: random.Random) -> tuple:
    """A random full grid."""
    found: list = []
    _search([0] * CELLS, 1, rng, found, {})
    return found[0]


def make_puzzle(rng: random.Random, min_clues: int = 17) -> tuple[tuple, tuple]:
    """(puzzle, solution): a full grid's clues removed in random order while the solution stays unique, down to
    ``min_clues`` clues (or as far as uniqueness allows)."""
    solution = full_grid(rng)
    puzzle = list(solution)
    clues = CELLS
    for i in rng.sample(range(CELLS), CELLS):
        if clues <= min_clues:
            break
        keep, puzzle[i] = puzzle[i], 0
        if count_solutions(puzzle) == 1:
            clues -= 1
        else:
            puzzle[i] = keep
    return tuple(puzzle), solution


def propagate(puzzle) -> tuple:
    """The grid constraint propagation reaches from ``puzzle`` without guessing: naked and hidden singles until
    neither fills a cell. A cell it cannot decide stays 0."""
    grid = list(puzzle)
    cand = _candidates(grid)
    if cand is None:
        return tuple(grid)
    changed = True
    while changed:
        changed = False
        for i in range(CELLS):  # naked singles
            if grid[i] == 0 and cand[i] and cand[i] & (cand[i] - 1) == 0:
                changed |= _place(grid, cand, i, cand[i].bit_length() - 1)
        for u in UNITS:  # hidden singles
            for d in range(1, 10):
                bit = 1 << d
                places = [i for i in u if cand[i] & bit]
                if len(places) == 1 and grid[places[0]] == 0:
                    changed |= _place(grid, cand, places[0], d)
    return tuple(grid)


def _place(grid: list[int], cand: list[int], i: int, d: int) -> bool:
    grid[i], cand[i] = d, 1 << d
    for p in PEERS[i]:
        cand[p] &= ~(1 << d)
    return True


def augment(puzzle, solution, rng: random.Random) -> tuple[tuple, tuple]:
    """The same random symmetry applied to a puzzle and its solution: digits relabelled, bands and the rows within
    them, stacks and the columns within them shuffled, and a transposition half of the time."""
    digits = [0] + rng.sample(range(1, 10), 9)
    bands, stacks = rng.sample(range(3), 3), rng.sample(range(3), 3)
    rows = [b * 3 + r for b in bands for r in rng.sample(range(3), 3)]
    cols = [s * 3 + c for s in stacks for c in rng.sample(range(3), 3)]
    transpose = rng.random() < 0.5

    def apply(grid):
        out = [digits[grid[rows[r] * 9 + cols[c]]] for r in range(9) for c in range(9)]
        return tuple(out[c * 9 + r] for r in range(9) for c in range(9)) if transpose else tuple(out)

    return apply(puzzle), apply(solution)


# ------------------------------------------------------------------------------------------ the data source

class Sudoku(Task):
    """``data=sudoku``: an example is one puzzle, 81 tokens row by row (0 an empty cell, 1-9 a clue); its answers
    are the solution's digits at the empty cells (the clues are not scored), so "exact" is the puzzle solved.
    Tags: ``clues`` (the puzzle's clue count) and ``guesses`` (the reference solver's branching points, in
    power-of-two buckets), by which the evaluation breaks accuracy down. ``augment`` adds that many augmented
    copies of every training puzzle (TRM trains on 1000 per puzzle); the test puzzles are never augmented. The
    accuracy evaluation gives the propagation-only baseline on the same test puzzles beside the model."""

    name = "sudoku"
    TAGS = {"clues": "value", "guesses": "log2"}
    OPTIONS = {"min_clues": 26, "augment": 0, "test_lengths": None}

    @property
    def vocab_size(self) -> int:
        return 10

    def min_length(self) -> int:
        return CELLS

    def train_lengths(self, mix: bool) -> list[int]:
        return [CELLS]

    def test_lengths(self) -> list[int]:
        return [CELLS]

    def problems(self) -> list[str]:
        out: list[str] = []
        whole(out, "data.options.min_clues", self.options["min_clues"], 17, 80, "26",
              " (clues left at the least; fewer is harder and slower to generate, 17 the fewest a unique sudoku has)")
        whole(out, "data.options.augment", self.options["augment"], 0, 100_000, "0",
              " (augmented copies of each training puzzle)")
        if self.options.get("test_lengths") not in (None, [CELLS]):
            out.append(f"data.options.test_lengths={self.options['test_lengths']}: a sudoku has 81 cells; leave it "
                       f"null")
        if not out and self.seq_len != CELLS:
            out.append(f"seq_len={self.seq_len}: data=sudoku is one token per cell; use seq_len=81")
        return out

    def describe(self) -> str:
        aug = f", {self.options['augment']} augmented copies each" if self.options["augment"] else ""
        return f"sudoku (at least {self.options['min_clues']} clues{aug})"

    def generate(self, n: int, length: int, g: torch.Generator, split: str) -> Examples:
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=g)))
        rows = []
        for _ in range(n):
            puzzle, solution = make_puzzle(rng, int(self.options["min_clues"]))
            rows.append((puzzle, solution, _guesses(puzzle)))
            if split == "train":
                for _ in range(int(self.options["augment"])):
                    p, s = augment(puzzle, solution, rng)
                    rows.append((p, s, rows[-1][2]))
        x = torch.tensor([r[0] for r in rows], dtype=torch.long).view(-1, CELLS)
        solution = torch.tensor([r[1] for r in rows], dtype=torch.long).view(-1, CELLS)
        blank = x == 0
        y = torch.where(blank, solution, torch.full_like(x, IGNORE))
        clues = (~blank).sum(1, keepdim=True).expand_as(x)
        guesses = torch.tensor([r[2] + 1 for r in rows], dtype=torch.long)[:, None].expand_as(x)  # log2 from 1
        return as_examples(x, y, clues=torch.where(blank, clues, 0), guesses=torch.where(blank, guesses, 0))

    def baseline(self, s: Examples) -> dict:
        """Constraint propagation without search (:func:`propagate`) on the same test puzzles: the share of empty
        cells it fills rightly, and of puzzles it solves."""
        right = cells = solved = 0
        for i in range(len(s)):
            puzzle, y = s.x[i].tolist(), s.y[i].tolist()
            grid = propagate(puzzle)
            ok = [grid[k] == y[k] for k in range(CELLS) if y[k] != IGNORE]
            right, cells, solved = right + sum(ok), cells + len(ok), solved + all(ok)
        return {"name": "propagation (naked and hidden singles, no search)", "accuracy": right / max(cells, 1),
                "exact": solved / max(len(s), 1)}


def _guesses(puzzle) -> int:
    stats: dict = {}
    solve(puzzle, stats)
    return int(stats.get("guesses", 0))


TASK = Sudoku
PROVIDES, TOKENIZERS = synthetic.PROVIDES, synthetic.TOKENIZERS

source_problems, load, vocab_size, notes = synthetic.registry_functions(TASK)
