"""The four tabs of the web UI: train, library, generate, tools."""
