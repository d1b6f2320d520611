"""Distil a student from a trained teacher with --distill METHOD. See README.md."""
import sys

from helper.train import main, run_student

if __name__ == '__main__':
    sys.exit(main(run_student))
