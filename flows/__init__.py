"""Prefect flows: recipes that call tasks in order. No tensor code here."""
