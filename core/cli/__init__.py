"""The CLI (``python -m core VERB ...``): ``main.py`` holds the verbs and the parser, ``options.py`` the options
that several verbs share (the detector and its settings, the feature cache), public so that the cascade, GAIN and
experiment verbs use them without importing the main module back."""

from core.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
