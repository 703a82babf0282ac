"""Backends the gateway routes to: one `serving.backends.base.Backend` implementation per serving system."""
