"""How replicas find each other and agree on one leader.

Heartbeats (heartbeat.py) feed the peer table and failure detector (membership.py), which
feeds the Bully election and its AMP commands (bully.py); service.py wires them together.
"""
