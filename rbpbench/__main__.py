import sys

from rbpbench.cli import main

sys.exit(main())
