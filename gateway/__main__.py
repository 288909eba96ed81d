"""``python -m gateway`` is the ``sagemaker-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
