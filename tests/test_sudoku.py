"""Sudoku puzzles for the recursive models (runner/tasks/sudoku.py): every generated puzzle has exactly one
solution, which agrees with its clues; generation repeats from its seed; augmentation keeps a puzzle valid and its
solution unique; the propagation baseline never contradicts the solution and stops where guessing is needed."""
import random

import pytest

from runner.tasks import sudoku as S


@pytest.fixture(scope="module")
def puzzles():
    rng = random.Random(7)
    return [S.make_puzzle(rng, min_clues=22) for _ in range(12)]


def brute_force_count(puzzle, limit=2) -> int:
    """An independent count: plain backtracking over the cells in order, checking each digit against its row,
    column and box by scanning them (no bitmasks, no cell ordering)."""
    grid = list(puzzle)

    def ok(i, d):
        r, c = divmod(i, 9)
        br, bc = r - r % 3, c - c % 3
        return (all(grid[r * 9 + k] != d for k in range(9)) and all(grid[k * 9 + c] != d for k in range(9))
                and all(grid[(br + a) * 9 + bc + b] != d for a in range(3) for b in range(3)))

    def go(i):
        while i < 81 and grid[i]:
            i += 1
        if i == 81:
            return 1
        n = 0
        for d in range(1, 10):
            if ok(i, d):
                grid[i] = d
                n += go(i + 1)
                grid[i] = 0
                if n >= limit:
                    break
        return n

    return go(0)


def test_every_puzzle_has_exactly_one_solution_and_it_keeps_the_clues(puzzles):
    for puzzle, solution in puzzles:
        assert S.is_solution(solution, puzzle)
        assert S.count_solutions(puzzle) == 1 and S.solve(puzzle) == solution
        assert sum(v > 0 for v in puzzle) >= 22
    assert brute_force_count(puzzles[0][0]) == 1  # an independent solver agrees (the slow one, on one puzzle)


def test_the_solver_counts_none_for_clashing_clues_and_many_for_too_few():
    clash = [0] * 81
    clash[0] = clash[1] = 5  # two 5s in the first row
    assert S.count_solutions(clash) == 0 and S.solve(clash) is None
    assert S.count_solutions([0] * 81) == 2 == brute_force_count([0] * 81)
    one_gone = list(S.full_grid(random.Random(1)))
    one_gone[40] = 0
    assert S.count_solutions(one_gone) == 1


def test_generation_repeats_from_its_seed_and_differs_across_seeds():
    a = S.make_puzzle(random.Random(3), 30)
    assert a == S.make_puzzle(random.Random(3), 30) and a != S.make_puzzle(random.Random(4), 30)
    assert S.is_solution(S.full_grid(random.Random(5))) and not S.is_solution((1,) * 81)


def test_augmentation_keeps_the_puzzle_valid_and_its_solution_unique(puzzles):
    rng = random.Random(0)
    for puzzle, solution in puzzles[:6]:
        p, s = S.augment(puzzle, solution, rng)
        assert S.is_solution(s, p) and S.count_solutions(p) == 1
        assert sum(v > 0 for v in p) == sum(v > 0 for v in puzzle) and p != puzzle


def test_propagation_fills_only_right_digits_and_needs_guessing_for_some(puzzles):
    solved = 0
    for puzzle, solution in puzzles:
        grid = S.propagate(puzzle)
        assert all(g in (0, s) for g, s in zip(grid, solution)) and all(g == p for g, p in zip(grid, puzzle) if p)
        solved += all(grid)
    one_gone = list(puzzles[0][1])
    one_gone[10] = 0
    assert S.propagate(one_gone) == puzzles[0][1]
    assert 0 < solved < len(puzzles), solved  # some need no search, some do: a baseline that tells them apart


def _data(**options):
    from omegaconf import OmegaConf

    from runner.tasks.synthetic import TaskData

    d = OmegaConf.create({"options": {"min_clues": 30, "augment": 0, "test_lengths": None, **options},
                          "n_train": 16, "n_test": 8, "mix_lengths": False, "seed": 3})
    return TaskData(S.Sudoku(d.options, 81), d, 81)


def _grids(e):
    """(puzzle, solution) of every example: the answers fill the empty cells."""
    out = []
    for i in range(len(e)):
        x, y = e.x[i].tolist(), e.y[i].tolist()
        out.append((tuple(x), tuple(v if v >= 0 else c for c, v in zip(x, y))))
    return out


def test_the_data_source_scores_the_empty_cells_of_unique_puzzles_and_keeps_test_apart_from_training():
    data = _data(augment=2)
    train, test = _grids(data.train), _grids(data.tests[81])
    assert len(train) == 16 * 3 and len(test) == 8  # each training puzzle and its two augmented copies
    for puzzle, solution in train + test:
        assert S.is_solution(solution, puzzle) and S.count_solutions(puzzle) == 1
    assert all(((data.train.y == -100) == (data.train.x > 0)).flatten().tolist())  # clues are not scored
    assert not {p for p, _ in test} & {p for p, _ in train} and data.info()["test_dropped_as_in_training"]["81"] == 0
    assert _grids(_data().tests[81]) == test and _data().fingerprint == _data().fingerprint  # the seed repeats it
    tags = data.tests[81].tags
    assert set(tags) == {"clues", "guesses"} and int(tags["clues"].max()) >= 30


def test_the_baseline_is_propagation_on_the_test_puzzles():
    data = _data()
    b = data.task.baseline(data.tests[81])
    solved = [all(S.propagate(p)) for p, _ in _grids(data.tests[81])]
    assert b["exact"] == sum(solved) / len(solved) and 0 <= b["exact"] <= b["accuracy"] <= 1


def test_a_fill_model_trains_on_sudoku_and_its_accuracy_stands_beside_the_baseline(tmp_path):
    import json

    from test_end_to_end import run_cli

    d = tmp_path / "run"
    p = run_cli("data=sudoku", "objective=fill", "seq_len=81", "model=tiny", "attention=gated_deltanet", "ratio=1:0",
                "data.n_train=24", "data.n_test=8", "train.steps=4", "train.batch_size=4", "train.warmup_steps=1",
                "train.eval_every=0", "eval.tasks=[ppl,accuracy]", "stages=[train,eval,bench]", "bench.lengths=[81]",
                "bench.repeats=1", f"hydra.run.dir={d}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    res = json.loads((d / "results.json").read_text())
    row = res["eval"]["accuracy"]["by_length"][0]
    assert row["length"] == 81 and row["examples"] == 8 and set(row["baseline"]) == {"name", "accuracy", "exact"}
    assert "baseline at 81, propagation" in p.stdout and res["bench_generation"] == []
    assert "objective=fill fills answers, it does not generate" in p.stdout
