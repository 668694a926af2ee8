"""DeltaDeFi: frame formats, units and symbols, a generated session, the live client."""
