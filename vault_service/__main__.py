from vault_service.cli import main

raise SystemExit(main())
