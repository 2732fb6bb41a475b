import sys

from sfspec.cli import main

sys.exit(main())
