"""Keeping replicas equal: push from the leader, anti-entropy, chunk fetching and repair."""
