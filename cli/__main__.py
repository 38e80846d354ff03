"""``python -m mlrig.cli``: the same as the ``mlrig`` console script."""

from mlrig.cli.main import main

main()
