"""Layer types, their registry, and the compositor that runs a composition as an agent."""
