"""Apps built from agents (research agent, knowledge assistant): each a package with its pipeline, CLI and routes."""
