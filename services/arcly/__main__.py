import sys

from arcly.node.cli import main

sys.exit(main())
