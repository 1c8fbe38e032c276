from livedeid.cli.main import main

raise SystemExit(main())
