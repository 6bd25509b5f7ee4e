"""`python -m service.cli`: the `clickstream` entry point without needing the script on PATH."""

from __future__ import annotations

import sys

from service.cli import main

sys.exit(main())
