"""opensegur."""
