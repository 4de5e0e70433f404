from gatekeeper.runtime.cli import main

raise SystemExit(main())
