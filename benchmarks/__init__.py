"""Performance targets, measured (never asserted in tests). Run: `make bench`."""
