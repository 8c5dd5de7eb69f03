import sys

from core.jobs.cli import main

sys.exit(main())
