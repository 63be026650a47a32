"""The historian: which training documents shaped a behaviour, in which phase (issue 5)."""
