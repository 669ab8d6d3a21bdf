import sys

from cafe.cli import main

sys.exit(main())
