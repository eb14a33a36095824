"""Models of other engines' backend choice, for parity reports (torch-free, data only)."""
