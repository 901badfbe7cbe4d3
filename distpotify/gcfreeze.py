"""Full garbage collections that do not walk what lives as long as the process.

CPython's full collection (generation 2) walks every tracked object. In a started replica
most of them are the program itself (modules, classes, functions, the service tree: about
77,000 objects), made at start-up and never garbage. ``gc.freeze`` moves the objects alive at
that point out of every later collection, as Instagram's web servers do; reference counting
still frees them, and what is made afterwards is collected as before. The 30-290 ms pauses
issue 22's probe found were /status's table counts, not collections; the freeze's own effect
on them was not measured apart, and it is kept as cheap insurance for the full passes.
"""
# test-case-name: tests.unit.test_gcfreeze

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then freeze what is left out of later collections; how many objects
    were frozen (all of them so far, not only this call's)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
