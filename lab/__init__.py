"""The network-namespace lab: Distpotify tested as a system, with real faults (root only).

Not part of the installed package: it runs from a checkout (``make lab``, ``python -m lab``,
``tests/lab``). Start with ``lab.py`` (hosts, replicas); the other modules are its pieces.
"""
