"""The scheduler: what is due, run history, locks, retries, hooks, metrics, installs."""
