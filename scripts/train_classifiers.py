#!/usr/bin/env python
"""Train per-collection classifiers on labelled embeddings or folders of images (same code as `loupe train`).

Examples:
    python scripts/train_classifiers.py --embeddings labelled.jsonl --embedding-model clip
    python scripts/train_classifiers.py --images collections/ --embedding-model mobilenet --progress

See app/collections/train.py for what is trained, how versions are compared and which are kept.
Exit codes: 0 every collection trained; 1 some were refused (reason on stderr); 2 unusable input.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.collections.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
