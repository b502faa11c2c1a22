"""The benchmark suites; each measures its figures side by side in one run."""
