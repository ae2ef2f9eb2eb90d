"""Storage backends: a flat key space with put-if-absent, ranged get, list and delete."""
