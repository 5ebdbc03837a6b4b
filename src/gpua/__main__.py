from gpua.cli import main
raise SystemExit(main())
