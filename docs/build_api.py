"""Build the API documentation of ``proxytasks`` and ``data_tools`` from their docstrings (pdoc).

    python docs/build_api.py [--out build/api] [--allow-warnings]

Writes static HTML (one page per module, plus a search index) into ``--out``. Every
warning pdoc raises while importing, parsing or rendering a module (a module that cannot
be imported, a broken docstring, an unresolvable annotation or cross-reference, ...) is
printed, and any such warning makes the exit status 1: ``make docs`` and ``.ci/run``
fail on it. Missing pdoc exits 2 with the command that installs it (``pip install -e '.[docs]'``).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["proxytasks", "data_tools"]


def module_names(packages: list[str]) -> list[str]:
    """The module specs that make pdoc render every module of ``packages`` exactly once.

    pdoc follows a package's ``__all__`` and so leaves out the submodules it does not name
    (``proxytasks`` exports only its core classes); each module found on disk that the specs
    so far do not cover is added as its own spec (``__main__`` left out).
    """
    import pkgutil

    from pdoc.extract import walk_specs

    specs: list[str] = []
    covered: set[str] = set()
    for package in packages:
        names = [package] + [m.name for m in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}.")]
        for name in sorted(names):
            if name in covered or name.endswith("__main__"):
                continue
            specs.append(name)
            covered.update(walk_specs([name]))
    return specs


def build(out: Path, modules: list[str]) -> list[str]:
    """Render ``modules`` (and their submodules) into ``out``; return the warnings raised, as text."""
    try:
        import pdoc
        import pdoc.render
    except ImportError:
        print("pdoc is not installed: pip install -e '.[docs]'", file=sys.stderr)
        sys.exit(2)
    # Nothing the docs import may reach for a GPU or spawn many threads.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    pdoc.render.configure(docformat="google", search=True, show_source=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*modules, output_directory=out)
    # Keep pdoc's own warnings (its category is UserWarning or a subclass, raised from pdoc's
    # modules); a third-party library's deprecation notice at import is not a docs problem.
    found = []
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            continue
        found.append(f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})")
    return found


def main() -> None:
    """Command line entry: build the docs and exit 1 when pdoc warned."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "api", help="output folder (default build/api)")
    ap.add_argument("--allow-warnings", action="store_true", help="print the warnings but exit 0")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))  # this checkout's modules, whatever is installed
    found = build(args.out, module_names(MODULES))
    pages = sum(1 for _ in args.out.rglob("*.html"))
    for line in found:
        print(f"docs warning: {line}", file=sys.stderr)
    print(f"API docs: {pages} pages in {args.out}; {len(found)} warning(s)", file=sys.stderr)
    if found and not args.allow_warnings:
        sys.exit(1)


if __name__ == "__main__":
    main()
