"""``python -m amst``: the same as the ``amst`` command."""

from ._entry import main

if __name__ == "__main__":
    main()
