"""The edges: DeltaDeFi's wire formats and network client, and the storage wiring."""
