"""Commands for explanation (filled in by its issue)."""
