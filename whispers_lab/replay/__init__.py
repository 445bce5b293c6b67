"""Offline replay of logged whispers requests: metrics, off-policy estimates, tuning."""
