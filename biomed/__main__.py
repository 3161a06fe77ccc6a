import sys

from biomed.cli import main

sys.exit(main())
