from sampling.eval.fid.cli import main

raise SystemExit(main())
