"""Where the test tree's own files are, wherever a test module sits below tests/."""
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DATA = TESTS / "data"
