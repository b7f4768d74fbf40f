"""The reliability suite (issue 13): fault injection and fuzzing of the real CLI, files and
browser server. Helpers from tests/ (the tiny model, eval fixtures) are importable here."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
