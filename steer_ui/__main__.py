from steer_ui.cli import main

raise SystemExit(main())
