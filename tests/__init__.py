"""The membench test suite: a package, so helpers are imported by module path (tests.methods.baselines_util)."""
