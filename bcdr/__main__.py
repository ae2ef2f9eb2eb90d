from bcdr.cli.main import main

raise SystemExit(main())
