"""`python -m cli ...` is the `zoo` command."""

import sys

from cli.main import main

sys.exit(main())
