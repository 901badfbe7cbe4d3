"""The Distpotify proxy: the one entry point, in front of the replicas it speaks HTTP to."""
