"""Reading a JSON file written by saekit (or edited by hand) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path, what: str, error: type[Exception], max_bytes: int = 64 * 2**20) -> Any:
    """The parsed document, or `error` naming the file: too large for `what`, not UTF-8 or
    not JSON, nested too deeply, unreadable."""
    try:
        if path.stat().st_size > max_bytes:
            raise error(f"{path}: larger than {max_bytes} bytes; not {what}")
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
