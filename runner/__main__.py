"""`python -m runner [overrides]`: compose the Hydra config (conf/ + the command line) and run one job, or a
sweep with -m."""
import os

import hydra
from omegaconf import DictConfig

from .config import register
from .job import run

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")

register()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
