"""Serving: torch-free runtimes of every model kind and the ensemble that combines them."""
