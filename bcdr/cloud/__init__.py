"""Azure management plane (Resource Manager)."""
