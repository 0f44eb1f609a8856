from pipeline import cli

raise SystemExit(cli.main())
