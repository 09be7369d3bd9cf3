"""Checking the model: the operations enabled in a state, random and exhaustive exploration."""
