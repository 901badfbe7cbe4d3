"""Command-line tools installed with Distpotify (``distpotify-cluster``), and the one place
that builds and supervises the twistd command lines of a replica and the proxy.
"""
