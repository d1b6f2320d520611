"""Paired, multi-seed studies of distillation objectives: `python scripts/evidence.py --help`, and
docs/EVIDENCE.md. The command line is `experiments.cli`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.cli import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
