from capitu.cli import main

raise SystemExit(main())
