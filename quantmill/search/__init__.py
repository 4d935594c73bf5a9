"""Goal-seeking recipes: a recipe's ``search:`` finds the best variant under an objective and constraints.

``strategy`` decides (pure logic), ``proxy`` measures the cheap screening proxy, ``trace`` is what the run
record keeps of a search; ``flows/search.py`` runs it through the cached steps.
"""
