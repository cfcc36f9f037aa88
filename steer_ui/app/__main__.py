"""The dashboard from an installed package, anywhere: ``python -m steer_ui.app`` takes ``app.py``'s options."""

import sys

from steer_ui.app.launch import main

sys.exit(main())
