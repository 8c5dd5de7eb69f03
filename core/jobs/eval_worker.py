"""The process of an evaluation job: `python -m core.jobs.eval_worker RUN_DIR` (started by core.jobs.evaljob)."""

import sys
from pathlib import Path

from core.jobs.evaljob import run_recorded

sys.exit(run_recorded(Path(sys.argv[1])))
