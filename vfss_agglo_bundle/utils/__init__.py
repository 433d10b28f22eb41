"""Generic helpers at the bottom of the package: atomic file I/O and JSON, state-dict reading, rank helpers and
the one registry lookup. Nothing here knows about VFSS."""
