"""`nasplat` with the test plug-ins registered, for tests that run the CLI as a real subprocess."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy  # noqa: E402,F401  (registers the toy space and task)

from nasplat.cli import main  # noqa: E402

sys.exit(main())
