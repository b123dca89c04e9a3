"""`python -m runner [overrides]`: compose the Hydra config (conf/ + the command line) and run one job, or a
sweep with -m."""
import os

import hydra
from omegaconf import DictConfig

from .config import register
from .job import run
from .paths import CONF_DIR


register()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


def _quiet_secondary_ranks() -> None:
    """Under torchrun only rank 0 writes: other ranks send Hydra's own files to a temporary folder."""
    if int(os.environ.get("RANK", "0")) > 0:
        import sys
        import tempfile

        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='runner-rank')}", "hydra.output_subdir=null",
                     "hydra/job_logging=none", "hydra/hydra_logging=none"]


def _seeds_short_form(argv: list[str]) -> list[str]:
    """``seeds=N`` on the command line is a sweep over ``seed=0..N-1`` (``-m seed=range(N)``), every other setting
    as given; each seed is one job, and the report groups them."""
    import re
    import sys

    out, n = [], None
    for a in argv:
        m = re.fullmatch(r"seeds=(.*)", a)
        if m is None:
            out.append(a)
            continue
        if not re.fullmatch(r"[1-9][0-9]{0,2}", m.group(1)):
            sys.stderr.write(f"error: seeds={m.group(1)} must be a whole number of seeds in [1, 999], e.g. seeds=3 "
                             f"(a sweep over seed=0..2)\n")
            raise SystemExit(2)
        n = int(m.group(1))
    if n is None:
        return argv
    if any(a.startswith("seed=") for a in out):
        sys.stderr.write(f"error: seeds={n} and seed= were both given; seeds={n} means seed=0..{n - 1}: give one "
                         f"of them\n")
        raise SystemExit(2)
    out.append(f"seed=range({n})")
    if "-m" not in out and "--multirun" not in out:
        out.insert(1, "-m")
    return out


if __name__ == "__main__":
    import sys

    from .stops import exit_code

    sys.argv = _seeds_short_form(sys.argv)
    _quiet_secondary_ranks()
    try:
        main()
    except KeyboardInterrupt as e:  # a sweep stopped by SIGINT / SIGTERM (its job recorded 'interrupted')
        raise SystemExit(exit_code(e)) from None
