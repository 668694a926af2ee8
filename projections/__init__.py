"""Pure folds of the log (positions, balances, P&L, fills) and the runner that persists them."""
