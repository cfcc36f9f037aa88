"""steer-ui dashboard: ``python app.py [--model M] [--host H] [--port P] [--share]``.

Scripts and sweeps use the CLI instead: ``python -m steer_ui generate ...``.
"""

import sys

from steer_ui.ui import main

if __name__ == "__main__":
    sys.exit(main())
