"""The benchmark suite: ``python -m bench all [--quick]`` (see bench/__main__.py); never part of the tests' timing."""
