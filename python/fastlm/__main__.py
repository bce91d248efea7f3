"""`python -m fastlm ...`: the `fastlm` command (useful where the console script is not on PATH)."""
import sys

from fastlm.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
