"""Privacy accounting: every privatized release is an event in a ledger; ε(δ) by RDP and PLD."""
