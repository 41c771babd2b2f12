from blitz.cli import main

raise SystemExit(main())
