import sys

from officerouter.cli import main

sys.exit(main())
