"""HTTP faces of a replica: public.py (the music API) and sync.py (/sync/*, between replicas)."""
