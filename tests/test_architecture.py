"""The layering of runner/ is a checked contract (pyproject.toml [tool.importlinter]): every module imports only
the layers below its own, independent modules of a layer do not import each other, so there are no circles and the
schema (runner/config.py) stands below the stages it configures."""
import os
import subprocess
import sys

from test_end_to_end import ROOT


def test_the_import_layers_hold():
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    p = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "0 broken" in p.stdout, p.stdout[-4000:] + p.stderr[-2000:]


def test_every_folder_of_runner_is_a_package():
    """A folder without __init__.py is left out of a regular (not editable) install."""
    missing = [d for d, _, files in os.walk(os.path.join(ROOT, "runner"))
               if "__pycache__" not in d and any(f.endswith(".py") for f in files) and "__init__.py" not in files]
    assert not missing, missing
