"""Train a teacher (or any model of models.model_dict) with cross-entropy. See README.md."""
import sys

from helper.train import main, run_teacher

if __name__ == '__main__':
    sys.exit(main(run_teacher))
