"""Store implementations: SQLite (embedded default); PostgreSQL follows behind the same slices."""
