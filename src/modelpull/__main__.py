"""`python -m modelpull`: the same as the `modelpull` command."""
from .cli import run

run()
