from megatron_mio.commands.tokenize_speech import main

raise SystemExit(main())
