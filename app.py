"""steer-ui dashboard: ``python app.py [--model M] [--host H] [--port P] [--share]``.

Scripts and sweeps use the CLI instead: ``python -m steer_ui generate ...``.
"""

import os
import sys

if os.environ.get("SPACES_ZERO_GPU"):  # a ZeroGPU Space: spaces patches torch on import, before any CUDA use
    import spaces  # noqa: F401

from steer_ui.app.launch import main

if __name__ == "__main__":
    sys.exit(main())
