from effv2.cli.main import main

raise SystemExit(main())
