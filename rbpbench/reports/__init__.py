"""Task-specific reports drawn from a results folder."""
