"""User accounts (issue 17): password hashes, session tokens, the login rate limit and the
in-memory user directory, shared by the replica and the proxy.

It imports nothing of distpotify but keys.py, so the proxy can check tokens and limit logins
without the replica's runtime.
"""
