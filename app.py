"""Entry point. Until the dashboard lands this runs the headless generator:
``python app.py --prompt "..." [generate options]`` is ``python -m steer_ui generate ...``.
"""

import sys

from steer_ui.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["generate", *sys.argv[1:]]))
