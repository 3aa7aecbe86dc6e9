"""Local stand-ins for destination APIs, used by integration tests and demos."""

# The sandbox ``signal-engine demo`` starts: its module offers ``demo()``
# (a ``common.SandboxDemo``), so the command itself names no vendor.
DEMO = "outreach"
