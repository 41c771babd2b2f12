"""Start-up: each command imports what it needs when it needs it (issue 33). A listing answers
without torch; a training run draws nothing, and imports nothing to draw with, before its
result is printed."""

import subprocess
import sys

import pytest

# packages of seconds each to import, that no training needs before its result
DRAWING = ("matplotlib", "torchvision", "pytorch_grad_cam", "mlflow", "timm")
LISTING = """
import sys
from blitz.cli import main
try:
    main(sys.argv[1:])
except SystemExit:  # argparse's, after the help
    pass
print("torch imported:", "torch" in sys.modules)
"""
TRAINING = """
import sys
from blitz.workflows import runs
def grids(*args):  # called right after the result is printed: what was imported by then?
    print("imported before the result:", sorted(m for m in {drawing} if m in sys.modules))
runs.save_grids = grids
from blitz.cli import main
sys.exit(main(sys.argv[1:]))
"""


def python(code: str, *args: str) -> str:
    """Run ``code`` with ``args`` in a fresh interpreter (the test's own BLITZ_DATA cache)."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("command", [["models"], ["presets"], ["--help"], ["train", "--help"]])
def test_listings_and_help_answer_without_importing_torch(command):
    assert python(LISTING, *command).splitlines()[-1] == "torch imported: False"


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_run_prints_its_result_before_importing_what_draws_the_report(tmp_path):
    code = TRAINING.replace("{drawing}", repr(DRAWING))
    args = ["train", "--data", "shapes:60", "--max-steps", "2", "--out", str(tmp_path / "run")]
    lines = python(code, *args).splitlines()
    result = next(i for i, line in enumerate(lines) if "| run directory: " in line)
    assert lines[result + 1] == "imported before the result: []"
