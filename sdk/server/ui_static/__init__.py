"""The web UI's files (HTML, ES modules, CSS), shipped as package data so an installed wheel serves the page."""
