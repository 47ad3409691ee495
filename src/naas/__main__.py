from naas.cli.main import main

raise SystemExit(main())
