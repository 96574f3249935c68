from megatron_mio.commands.decode_speech import main

raise SystemExit(main())
