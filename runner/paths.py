"""Where the project's own files are: the Hydra config folder and the named studies (one place for every caller)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(ROOT, "conf")
EXPERIMENTS_DIR = os.path.join(ROOT, "experiments")
