"""Commands for detection (filled in by its issue)."""
