"""Build vstream, compiling the per-trade loop (``vstream/kernel.py``) to C with mypyc, and
the replay decoder's line-shape check (``vstream/_lines.c``).

Both compiled modules are optional: with no C compiler, no Python headers, or
``VSTREAM_PURE=1`` in the environment, vstream installs as pure Python and runs the same
logic interpreted (slower, same output). ``python -c "import vstream.kernel as k;
print(k.__file__)"`` tells which one is installed: a ``.so``/``.pyd`` is the compiled one.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup


def _kernel() -> list[object]:
    if os.environ.get("VSTREAM_PURE", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("vstream: mypyc not available, installing pure Python", file=sys.stderr)
        return []
    # Only the kernel is analysed and compiled: it imports nothing from the package and
    # only msgspec from outside (typed as Any here), so the build needs no runtime
    # dependency. No config file: the project's mypy settings are for checking the
    # package, not for this one module.
    options = ["--config-file=", "--follow-imports=skip", "--ignore-missing-imports"]
    try:
        extensions = mypycify([*options, "vstream/kernel.py"], opt_level="3")
    except (Exception, SystemExit) as exc:  # mypyc reports its own failures with sys.exit
        print(f"vstream: cannot compile the kernel ({exc}), installing pure Python", file=sys.stderr)
        return []
    for ext in extensions:
        # A failed compile (no compiler, no headers) leaves the pure-Python module in use.
        ext.optional = True
    return list(extensions)


def _lines() -> list[object]:
    if os.environ.get("VSTREAM_PURE", "") not in ("", "0"):
        return []
    # optional: without a compiler, vstream.trades uses its interpreted check
    return [Extension("vstream._lines", ["vstream/_lines.c"], optional=True)]


setup(ext_modules=[*_kernel(), *_lines()])
