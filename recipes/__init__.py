"""The built-in recipes (one TOML file per published experiment), installed as ``pyroprune.recipe_files``.

``pyroprune prune NAME`` and :func:`pyroprune.recipes.load_recipe` accept a file path or the name of one of
these files (without ``.toml``).
"""
