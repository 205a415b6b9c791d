from session_node.cli import main

raise SystemExit(main())
