"""Plugin commands: ``python -m framework COMMAND`` subcommands that know particular specs, models or data
(registered through the ``register_commands`` hook, so the core stays free of them)."""
