"""`python -m openaim ...`, and launchers that take a script path: spark-submit openaim/__main__.py ...

Run as a file, Python puts this folder (openaim/) first on sys.path, where modules such as cli.py or
pipeline.py would shadow same-named top-level modules; the checkout's root takes its place instead, so
the packages import as they do under ``-m``.
"""

import sys
from pathlib import Path

if not __package__:  # run as a file, not as `python -m openaim`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from openaim.cli import main  # after the sys.path fix above

if __name__ == "__main__":
    main()
