"""The command line's subcommands, one module each: run, bench, info (``__main__`` assembles them)."""
