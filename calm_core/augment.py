"""Moved to calm_core.preprocess.augment; these names stay importable from here."""

from .preprocess.augment import DEFAULT_RECIPE, RECIPES, SHIFTS, SUGGESTED_RECIPE, Shift, augment, recipe_channels

__all__ = ["DEFAULT_RECIPE", "RECIPES", "SHIFTS", "SUGGESTED_RECIPE", "Shift", "augment", "recipe_channels"]
