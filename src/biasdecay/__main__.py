from biasdecay.cli import main

raise SystemExit(main())
