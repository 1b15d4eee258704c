import os
import sys
from pathlib import Path

# One torch thread in every test process and in the CLI subprocesses they start: the suite runs as two
# pytest-xdist workers on two cores, and the tests' models are small (a tiny supernet runs fastest on one
# thread, and two threads per process on a shared core make them crawl).
os.environ["OMP_NUM_THREADS"] = "1"
import torch  # noqa: E402

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import toy  # noqa: E402,F401  (registers the toy space and task for every test)
