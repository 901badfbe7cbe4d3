"""The Subsonic / OpenSubsonic API at /rest (issue 18; docs/architecture.md, "Subsonic")."""
