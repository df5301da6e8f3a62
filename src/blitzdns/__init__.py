"""blitzdns: a local DNS stub plus a supervised SSH forwarder for legacy cleartext services."""

__version__ = "0.1.0"
