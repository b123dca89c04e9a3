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

A grid is a tuple of 81 ints, row by row, 0 for an empty cell and 1-9 for a digit.
"""
from __future__ import annotations

import random
from typing import Optional

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
