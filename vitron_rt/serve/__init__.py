"""The HTTP server: an OpenAI-compatible face over `vitron_rt.runtime`."""
