"""Fill the answers of a fixed-size puzzle: the target at every position predicted from the whole input at once,
non-causally (every mixer sees the whole sequence), as TRM and HRM predict every cell of a Sudoku grid (arXiv
2510.04871, 2506.21734). The data's targets are aligned with its inputs, not shifted, so it needs a source of
examples with answers (``data=sudoku``, the generated tasks), never running text, where the next token would be
in plain view. Validation scores are the exact loss at the answers."""
from __future__ import annotations

from .next_token import loss, prepare, token_scores  # noqa: F401 - the same cross-entropy, at aligned targets

CAUSAL = False
BOUND = False
NEEDS = "answers"
GENERATES = False  # no text to generate: the bench stage times the forward pass and the training step only
