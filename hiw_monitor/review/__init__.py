"""The DBA review as data: checks, findings and the health score."""
