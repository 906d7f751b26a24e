"""Terraform for the GPU box, its data volume, the store and the watcher, and its thin wrapper."""
