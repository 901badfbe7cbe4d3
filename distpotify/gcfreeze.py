"""Full garbage collections that do not walk what lives as long as the process.

CPython's full collection (generation 2) walks every tracked object. In a started replica
most of them are the program itself (modules, classes, functions, the service tree), made at
start-up and never garbage; walking them took 30 ms every twenty seconds or so of serving,
and up to 290 ms, each a pause of every request (issue 22's p99s). ``gc.freeze`` moves the
objects alive at that point out of every later collection, as Instagram's web servers do;
reference counting still frees them, and what is made afterwards is collected as before.
"""
# test-case-name: tests.unit.test_service

from __future__ import annotations

import gc


def freeze_startup_objects() -> int:
    """Collect once, then freeze what is left out of later collections; how many objects
    were frozen (all of them so far, not only this call's)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
