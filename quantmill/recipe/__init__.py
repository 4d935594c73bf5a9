"""Recipes: the YAML language (schema), loading and validation."""

from quantmill.recipe.load import LoadedRecipe, load_recipe, load_recipe_text
from quantmill.recipe.matrix import Variant
from quantmill.recipe.schema import GateRule, Recipe

__all__ = ["GateRule", "LoadedRecipe", "Recipe", "Variant", "load_recipe", "load_recipe_text"]
