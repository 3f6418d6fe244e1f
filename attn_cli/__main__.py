from attn_cli.cli import main

raise SystemExit(main())
