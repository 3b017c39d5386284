import sys

from quantforge.cli import main

sys.exit(main())
