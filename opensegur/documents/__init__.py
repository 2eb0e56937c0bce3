"""documents: the document domain (metadata, deliveries)."""
