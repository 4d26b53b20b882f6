"""``python -m proxytasks`` runs the command line."""
from .cli import main

main()
