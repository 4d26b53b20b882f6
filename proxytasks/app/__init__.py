"""The naming app."""
