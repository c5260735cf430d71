"""`python -m membench ...` is the `membench` command (for a checkout without the console script)."""

from .cli import main

if __name__ == "__main__":
    main()
