"""Thin wrappers around TensorFlow and Annoy: the only modules that import them."""
