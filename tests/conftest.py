import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy  # noqa: E402,F401  (registers the toy space and task for every test)
