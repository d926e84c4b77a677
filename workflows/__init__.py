"""The ticket workflow and the pure policy code it runs."""
