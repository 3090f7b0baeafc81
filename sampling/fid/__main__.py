from sampling.fid.cli import main

raise SystemExit(main())
