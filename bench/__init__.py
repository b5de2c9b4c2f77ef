"""Benchmarks of vstream (``python -m bench --help``). They report figures; they assert nothing.

Not part of the test suite and not run in CI: timings depend on the machine and on what else
runs on it. Every figure is printed with what it measures; README "Performance" explains them.
"""
