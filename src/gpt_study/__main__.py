"""``python -m gpt_study`` (and ``torchrun -m gpt_study``) run the same CLI as ``gpt-study``."""

import sys

from gpt_study.cli import main

if __name__ == "__main__":
    sys.exit(main())
