"""``python benchmarks/run.py [options]``: the same as ``python -m benchmarks``."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: import the package from the repository root, and keep this
    # directory off sys.path so its module names cannot shadow anything.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    from benchmarks.cli import main

    raise SystemExit(main())
