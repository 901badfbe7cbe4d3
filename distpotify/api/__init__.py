"""HTTP faces of a replica: public.py (the music API) and, later, sync.py (/sync/*)."""
