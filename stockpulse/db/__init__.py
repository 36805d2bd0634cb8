"""Storage: table definitions, engines and migrations."""
