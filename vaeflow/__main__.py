import sys

from vaeflow.cli import main

sys.exit(main())
