"""Tools that test Distpotify as a system: the network-namespace lab and its parts.

Start with ``lab.py`` (hosts, replicas, command line); the other modules are its pieces.
"""
