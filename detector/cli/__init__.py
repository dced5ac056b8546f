"""Command-line entry points' shared start-up path (``common.py``); the tools themselves live in tools/."""
