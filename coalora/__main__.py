import sys

from coalora.cli import main

sys.exit(main())
