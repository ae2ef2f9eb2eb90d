"""Azure regions (catalog) and data-residency rules."""
