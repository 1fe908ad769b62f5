"""Commands for classification (filled in by its issue)."""
