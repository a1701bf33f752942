"""See README: top-level folder installed as reamo.tools."""
