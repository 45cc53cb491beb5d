"""``python -m demo`` (``make demo``): the whole pipeline on one machine.

A development tool beside the package, not part of the wheel; the code is in
:mod:`demo.__main__`.
"""
