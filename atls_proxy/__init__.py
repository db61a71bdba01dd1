"""atls-proxy: an attested TLS 1.3 proxy (IETF SEAT Expat over RFC 9261 exported authenticators)."""

__version__ = "0.1.0"
