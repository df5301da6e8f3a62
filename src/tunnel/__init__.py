"""Supervised SSH port forwarding: local mouths carried over one SSH link.

Usable on its own; imports nothing from :mod:`blitzdns`.
"""
