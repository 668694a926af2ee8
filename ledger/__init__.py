"""deltadefi-ledger: the domain events, the event log, the append use case and the CLI."""
