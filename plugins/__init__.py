"""First-party plugins: protocols, tools, models and integrations.

Each module here implements hanlin's registration hooks; the sdk lists them in
``hanlin.plugin_manager.BUILTIN_PLUGINS`` and imports them only through the
plugin manager.
"""
