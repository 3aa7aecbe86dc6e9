"""Local stand-ins for destination APIs, used by integration tests and demos."""
