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


if __name__ == "__main__":
    from .stops import exit_code

    _quiet_secondary_ranks()
    try:
        main()
    except KeyboardInterrupt as e:  # a sweep stopped by SIGINT / SIGTERM (its job recorded 'interrupted')
        raise SystemExit(exit_code(e)) from None
