"""Evidence records kept in the repository, and (later) the controls evaluated over them."""
