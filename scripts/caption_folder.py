#!/usr/bin/env python
"""Write a caption `name.txt` beside every image of a folder: the same code as `loupe caption DIR`.

In-process (the BLIP model of MODEL_DIR/caption or CAPTION_PATH, greedy decoding) or against a
running Loupe (--server URL: POST /v1/tasks with a describe task). Images whose .txt exists are
skipped unless --force; failures are listed at the end.

Examples:
    python scripts/caption_folder.py ~/photos
    python scripts/caption_folder.py ~/photos --force --max-length 30
    LOUPE_API_KEY=… python scripts/caption_folder.py ~/photos --server http://loupe:8000

Exit codes: those of `loupe score` (0 done, 1 some images failed, 2 usage, 3 server unreachable or
key refused, 4 refused: no caption model / no describe task, 130 interrupted).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.cli.caption import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="caption_folder.py"))
