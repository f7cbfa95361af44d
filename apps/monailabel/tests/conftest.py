"""Make the app's ``lib`` package importable as MONAI Label imports it (the app folder on ``sys.path``)."""

import sys
from pathlib import Path

APP_FOLDER = Path(__file__).resolve().parents[1]
if str(APP_FOLDER) not in sys.path:
    sys.path.insert(0, str(APP_FOLDER))
