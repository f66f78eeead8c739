"""Deployment: registry-ready packages, inspection."""
