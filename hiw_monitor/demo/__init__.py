"""The embedded default: a throwaway PostgreSQL with the Heroes in Waiting demo schema."""
